//! Enrolled network namespaces, followed by path rather than pinned once.
//!
//! Each namespace file discovery names is looked at again every [`FOLLOW_INTERVAL`]:
//! one that does not exist yet is enrolled when it appears; one deleted and made again
//! under the same path is enrolled anew (new cookie in, old one out). The namespace
//! found is held open, so its identity (inode) cannot pass to a new namespace while
//! it is enrolled, and eviction enters it through that descriptor, never through a
//! path that may name something else by then. A Pod's `/proc/PID/ns/net` is enrolled
//! only while the process is in that Pod's cgroup.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    datapath::netns,
    discovery::{Enrollee, kube::still_the_pods},
};

/// How often every enrolled path is looked at again.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// An enrolled namespace, held open.
#[derive(Debug)]
pub struct Netns {
    pub path: PathBuf,
    pub cookie: u64,
    /// A descriptor that enters it (`setns`).
    pub file: File,
    /// Device and inode of the namespace, to tell it from one made later at the path.
    id: (u64, u64),
}

/// Why a path is not enrolled right now.
#[derive(Debug, thiserror::Error)]
pub enum NotEnrolled {
    #[error("{0} does not exist (yet): enrolled once it appears")]
    Missing(String),
    #[error("{0} is not a network namespace")]
    NotNetns(String),
    #[error("{path} no longer belongs to Pod {uid} (its process is gone)")]
    NotThePods { path: String, uid: String },
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

struct Tracked {
    enrollee: Enrollee,
    netns: Option<Arc<Netns>>,
    /// What was last logged about it, so each change is logged once.
    said: Option<String>,
}

/// The namespaces being followed, and the ones enrolled now.
pub struct Enrolled {
    tracked: BTreeMap<PathBuf, Tracked>,
    published: watch::Sender<Arc<[Arc<Netns>]>>,
}

impl Default for Enrolled {
    fn default() -> Self {
        Self { tracked: BTreeMap::new(), published: watch::Sender::new(Arc::from(Vec::new())) }
    }
}

impl Enrolled {
    /// The namespaces enrolled now, as they change (for eviction).
    pub fn watch(&self) -> watch::Receiver<Arc<[Arc<Netns>]>> {
        self.published.subscribe()
    }

    pub fn cookies(&self) -> BTreeSet<u64> {
        self.tracked.values().filter_map(|t| t.netns.as_ref()).map(|n| n.cookie).collect()
    }

    /// Whether following `wanted` would change nothing it cannot take: a path that
    /// exists but is not a network namespace is refused (a typo, a plain file).
    pub fn check(wanted: &[Enrollee]) -> Result<(), NotEnrolled> {
        for enrollee in wanted {
            match open(enrollee) {
                Ok(_) | Err(NotEnrolled::Missing(_) | NotEnrolled::NotThePods { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Follows exactly `wanted` from now on; namespaces already enrolled stay as
    /// they are.
    pub fn follow(&mut self, wanted: &[Enrollee]) {
        let mut tracked = BTreeMap::new();
        for enrollee in wanted {
            let kept = self.tracked.remove(&enrollee.path).filter(|t| t.enrollee == *enrollee);
            let t = kept.unwrap_or(Tracked { enrollee: enrollee.clone(), netns: None, said: None });
            tracked.insert(enrollee.path.clone(), t);
        }
        self.tracked = tracked;
        self.refresh();
    }

    /// Looks at every path again; returns whether the enrolled set changed.
    pub fn refresh(&mut self) -> bool {
        let mut changed = false;
        for t in self.tracked.values_mut() {
            changed |= t.refresh();
        }
        let now: Vec<Arc<Netns>> = self.tracked.values().filter_map(|t| t.netns.clone()).collect();
        self.published.send_if_modified(|published| {
            let differs = published.len() != now.len()
                || published.iter().zip(&now).any(|(a, b)| !Arc::ptr_eq(a, b));
            if differs {
                *published = Arc::from(now);
            }
            differs
        });
        changed
    }
}

impl Tracked {
    /// Returns whether the namespace enrolled at this path changed.
    fn refresh(&mut self) -> bool {
        let path = &self.enrollee.path;
        let unchanged = match (&self.netns, std::fs::metadata(path)) {
            (Some(netns), Ok(meta)) => (meta.dev(), meta.ino()) == netns.id,
            _ => false,
        };
        if unchanged {
            return false;
        }
        let before = self.netns.as_ref().map(|n| n.cookie);
        let found = open(&self.enrollee);
        let said = match &found {
            Ok(netns) => format!("enrolled {} (netns cookie {})", path.display(), netns.cookie),
            Err(err) => format!("enroll.netns {}", crate::Chain(err)),
        };
        if self.said.as_ref() != Some(&said) {
            match &found {
                Ok(_) => info!("{said}"),
                Err(_) => warn!("{said}"),
            }
            self.said = Some(said);
        }
        self.netns = found.ok().map(Arc::new);
        before != self.netns.as_ref().map(|n| n.cookie)
    }
}

/// Opens the namespace `enrollee` names and reads its cookie.
fn open(enrollee: &Enrollee) -> Result<Netns, NotEnrolled> {
    let path = enrollee.path.clone();
    let shown = path.display().to_string();
    let io = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => NotEnrolled::Missing(shown.clone()),
        _ => NotEnrolled::Io { path: shown.clone(), source },
    };
    let file = File::open(&path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let cookie = netns::cookie_of(&file).map_err(|err| match err.raw_os_error() {
        Some(libc::EINVAL) => NotEnrolled::NotNetns(shown.clone()),
        _ => io(err),
    })?;
    // Checked after opening: a process that the cgroup still places in the Pod had
    // the Pod's namespace when it was opened.
    if let Some(uid) = &enrollee.pod_uid
        && !still_the_pods(&path, uid)
    {
        return Err(NotEnrolled::NotThePods { path: shown, uid: uid.clone() });
    }
    Ok(Netns { path, cookie, file, id: (meta.dev(), meta.ino()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_path_waits_a_file_is_refused_and_a_namespace_is_enrolled() {
        let mut enrolled = Enrolled::default();
        let own = Enrollee::path("/proc/self/ns/net");
        let missing = Enrollee::path("/var/run/netns/sockeye-test-does-not-exist");
        Enrolled::check(&[own.clone(), missing.clone()]).unwrap();
        enrolled.follow(&[own.clone(), missing]);
        let own_cookie = crate::sys::own_netns_cookie().unwrap();
        assert_eq!(enrolled.cookies(), BTreeSet::from([own_cookie]));
        assert_eq!(enrolled.watch().borrow().len(), 1);
        assert!(!enrolled.refresh(), "nothing changed");

        let file = Enrollee::path("/proc/self/status");
        let err = Enrolled::check(&[file]).unwrap_err();
        assert!(err.to_string().contains("is not a network namespace"), "{err}");

        enrolled.follow(&[]);
        assert!(enrolled.cookies().is_empty());
        assert!(enrolled.watch().borrow().is_empty());
    }

    #[test]
    fn a_pods_path_whose_process_left_the_pod_is_not_enrolled() {
        // This process is not in a Pod's cgroup.
        let stranger = Enrollee { path: "/proc/self/ns/net".into(), pod_uid: Some("uid-1".into()) };
        let mut enrolled = Enrolled::default();
        enrolled.follow(&[stranger]);
        assert!(enrolled.cookies().is_empty());
    }
}
