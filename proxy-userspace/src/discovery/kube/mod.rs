//! Kubernetes discovery: watches of opted-in Namespaces, this node's Pods, Services
//! and EndpointSlices, folded into one [`Desired`] state.
//!
//! The watches are kube-runtime watchers: they list, then watch from the list's
//! resourceVersion, and relist after a 410 Gone or a broken connection, retrying with
//! backoff. While the API server is away, the last state stays in force. Objects are
//! read as untyped JSON and converted one by one ([`objects`]), so one odd object is
//! skipped with a log line instead of failing its whole list.

mod netns;

pub use netns::still_the_pods;
pub mod objects;
mod snapshot;

use std::{path::PathBuf, pin::Pin, sync::Arc, time::Duration};

use futures::{FutureExt as _, Stream, StreamExt as _};
use kube::{
    Api, Client,
    core::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{
        WatchStreamExt as _,
        utils::Backoff,
        watcher::{self, Event},
    },
};
use tokio::sync::watch;
use tracing::{info, warn};

pub use objects::PROXY_LABEL;
use snapshot::Snapshot;

use super::{Desired, Discovery};

/// How often Pods whose network namespace was not found yet are looked for again.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(1);

pub struct Kube {
    rx: watch::Receiver<Arc<Desired>>,
    synced: watch::Receiver<bool>,
}

impl Kube {
    /// Connects with the in-cluster service account, or `KUBECONFIG` outside a cluster.
    pub async fn connect(node: &str) -> anyhow::Result<Self> {
        let client = Client::try_default().await.map_err(|err| {
            anyhow::anyhow!(
                "cannot configure the Kubernetes client (run in a Pod with a service account, \
                 or set KUBECONFIG): {err}"
            )
        })?;
        Ok(Self::start(client, node, "/proc"))
    }

    /// Starts the watches. `proc_root` is where Pods' processes are looked up.
    pub fn start(client: Client, node: &str, proc_root: impl Into<PathBuf>) -> Self {
        let (tx, rx) = watch::channel(Arc::new(Desired::default()));
        let (synced_tx, synced) = watch::channel(false);
        let watches = Watches {
            node: node.to_string(),
            snapshot: Snapshot::default(),
            finder: netns::Finder::new(proc_root),
            enroll: Vec::new(),
        };
        tokio::spawn(watches.run(streams(&client, node), tx, synced_tx));
        Self { rx, synced }
    }
}

impl Discovery for Kube {
    fn watch(&self) -> watch::Receiver<Arc<Desired>> {
        self.rx.clone()
    }

    async fn synced(&self) {
        let mut synced = self.synced.clone();
        let _ = synced.wait_for(|done| *done).await;
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
}

type Item = (Kind, Result<Event<DynamicObject>, watcher::Error>);

fn streams(client: &Client, node: &str) -> impl Stream<Item = Item> + Unpin + use<> {
    let watch = |kind: Kind, group: &str, plural: &str, config: watcher::Config| {
        let gvk = GroupVersionKind::gvk(group, "v1", &format!("{kind:?}"));
        let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        let stream = watcher::watcher(api, config).backoff(Retry::default());
        Box::pin(stream.map(move |item| (kind, item))) as Pin<Box<dyn Stream<Item = Item> + Send>>
    };
    let config = watcher::Config::default();
    futures::stream::select_all([
        watch(
            Kind::Namespace,
            "",
            "namespaces",
            config.clone().labels(&format!("{PROXY_LABEL}=enabled")),
        ),
        watch(Kind::Pod, "", "pods", config.clone().fields(&format!("spec.nodeName={node}"))),
        watch(Kind::Service, "", "services", config.clone()),
        watch(Kind::EndpointSlice, "discovery.k8s.io", "endpointslices", config),
    ])
}

struct Watches {
    node: String,
    snapshot: Snapshot,
    finder: netns::Finder,
    /// The enrolled Pods' namespaces last found.
    enroll: Vec<super::Enrollee>,
}

/// What a batch of watch events changed.
#[derive(Clone, Copy, Default)]
struct Changed {
    /// Anything that makes the desired state.
    state: bool,
    /// Which Pods are enrolled: their namespaces are looked up again.
    pods: bool,
}

impl std::ops::BitOrAssign for Changed {
    fn bitor_assign(&mut self, other: Self) {
        self.state |= other.state;
        self.pods |= other.pods;
    }
}

impl Watches {
    async fn run(
        mut self,
        mut streams: impl Stream<Item = Item> + Unpin,
        tx: watch::Sender<Arc<Desired>>,
        synced: watch::Sender<bool>,
    ) {
        info!(node = %self.node, "watching the Kubernetes API");
        let mut resolve = tokio::time::interval(RESOLVE_INTERVAL);
        resolve.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut changed = Changed::default();
            tokio::select! {
                item = streams.next() => match item {
                    Some(item) => changed |= self.apply(item),
                    None => return,
                },
                // Pods' processes come and go without an event.
                _ = resolve.tick() => changed.pods = true,
            }
            // A burst of events makes one new state.
            while let Some(Some(item)) = streams.next().now_or_never() {
                changed |= self.apply(item);
            }
            if !self.snapshot.synced() || tx.is_closed() {
                continue;
            }
            let first = !*synced.borrow();
            if changed.pods || first {
                let uids: Vec<&str> =
                    self.snapshot.enrolled_pods().map(|pod| pod.uid.as_str()).collect();
                let enroll = self.finder.enrollees(uids);
                changed.state |= enroll != self.enroll;
                self.enroll = enroll;
            }
            if !changed.state && !first {
                continue;
            }
            let desired = self.snapshot.desired(self.enroll.clone());
            if first {
                // The initial lists' JSON is gone: give its memory back.
                crate::sys::release_free_memory();
                info!(
                    services = desired.services.len(),
                    pods = self.snapshot.enrolled_pods().count(),
                    netns_found = desired.enroll.len(),
                    "synced with the Kubernetes API"
                );
            }
            tx.send_if_modified(|current| {
                let modified = **current != desired;
                if modified {
                    *current = Arc::new(desired);
                }
                modified
            });
            synced.send_replace(true);
        }
    }

    fn apply(&mut self, (kind, item): Item) -> Changed {
        let event = match item {
            Ok(event) => event,
            Err(err) => {
                warn!(?kind, "watch failed, retrying: {err}");
                return Changed::default();
            }
        };
        let s = &mut self.snapshot;
        let (state, pods) = match kind {
            Kind::Namespace => (false, s.namespace(event)),
            Kind::Pod => {
                let changed = s.pod(event, &self.node);
                (changed, changed)
            }
            Kind::Service => (s.service(event), false),
            Kind::EndpointSlice => (s.slice(event), false),
        };
        Changed { state, pods }
    }
}

/// Retries a failed watch after 250 ms, doubling to 4 s: a restarted API server is
/// found again within seconds.
struct Retry(Duration);

const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(4);

impl Default for Retry {
    fn default() -> Self {
        Self(RETRY_FIRST)
    }
}

impl Iterator for Retry {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.0;
        self.0 = (delay * 2).min(RETRY_MAX);
        Some(delay)
    }
}

impl Backoff for Retry {
    fn reset(&mut self) {
        self.0 = RETRY_FIRST;
    }
}
