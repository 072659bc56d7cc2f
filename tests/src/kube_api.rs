//! A stand-in for the Kubernetes API server, for `sockeye run --kube` in the sandbox.
//!
//! It speaks the list/watch protocol a real API server speaks over HTTP/1.1: lists
//! carry a resourceVersion; `?watch=true&resourceVersion=N` streams newline-separated
//! JSON watch events (ADDED, MODIFIED, DELETED, BOOKMARK) in a chunked response;
//! label and field selectors filter, and an object that stops matching a selector is
//! DELETED for that watch; a watch from a version older than the last compaction gets
//! an ERROR event with a 410 Gone Status. It can be stopped (every connection cut)
//! and started again with its objects kept, like a restarted API server.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};

/// How often an idle watch gets a BOOKMARK.
const BOOKMARK_INTERVAL: Duration = Duration::from_millis(500);

pub struct FakeApi {
    store: Arc<Mutex<Store>>,
    changes: Arc<watch::Sender<u64>>,
    runtime: tokio::runtime::Runtime,
    server: Option<tokio::task::JoinHandle<()>>,
    addr: SocketAddr,
}

#[derive(Default)]
struct Store {
    version: u64,
    /// Objects by (resource, namespace/name).
    objects: BTreeMap<(String, String), Value>,
    history: Vec<Change>,
    /// Watches from versions below this get 410 Gone.
    compacted: u64,
    requests: Vec<String>,
}

struct Change {
    version: u64,
    resource: String,
    old: Option<Value>,
    new: Option<Value>,
}

impl FakeApi {
    /// Serves on `listener` (bound wherever the agent can reach it).
    pub fn start(listener: std::net::TcpListener) -> anyhow::Result<Self> {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let addr = listener.local_addr()?;
        let mut api = Self {
            store: Arc::default(),
            changes: Arc::new(watch::Sender::new(0)),
            runtime,
            server: None,
            addr,
        };
        api.serve(listener)?;
        Ok(api)
    }

    fn serve(&mut self, listener: std::net::TcpListener) -> anyhow::Result<()> {
        listener.set_nonblocking(true)?;
        let _guard = self.runtime.enter();
        let listener = TcpListener::from_std(listener)?;
        let (store, changes) = (self.store.clone(), self.changes.clone());
        self.server = Some(self.runtime.spawn(async move {
            // Dropping the set (when the server task is aborted) cuts every connection.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(connection(stream, store.clone(), changes.subscribe()));
            }
        }));
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig for a client of this server (no TLS, no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             users:\n- name: fake\n  user: {{}}\n",
            self.addr
        )
    }

    /// Goes away: the listener closes and every connection is cut.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = self.runtime.block_on(server);
        }
    }

    /// Comes back on `listener`, with the objects it had.
    pub fn restart(&mut self, listener: std::net::TcpListener) -> anyhow::Result<()> {
        self.stop();
        self.serve(listener)
    }

    /// Creates or replaces an object (its `kind` says where it goes); returns its
    /// new resourceVersion.
    pub fn apply(&self, mut object: Value) -> anyhow::Result<u64> {
        let (resource, key) = locate(&object)?;
        let mut store = self.store.lock().unwrap();
        store.version += 1;
        let version = store.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let old = store.objects.insert((resource.clone(), key), object.clone());
        store.history.push(Change { version, resource, old, new: Some(object) });
        drop(store);
        self.changes.send_replace(version);
        Ok(version)
    }

    /// Deletes an object (named by its kind, namespace and name).
    pub fn delete(&self, object: &Value) -> anyhow::Result<()> {
        let (resource, key) = locate(object)?;
        let mut store = self.store.lock().unwrap();
        let old = store
            .objects
            .remove(&(resource.clone(), key.clone()))
            .with_context(|| format!("no {resource} {key}"))?;
        store.version += 1;
        let version = store.version;
        store.history.push(Change { version, resource, old: Some(old), new: None });
        drop(store);
        self.changes.send_replace(version);
        Ok(())
    }

    /// Forgets the history, as etcd compaction does: watches resuming from an older
    /// version get 410 Gone and must list again.
    pub fn compact(&self) {
        let mut store = self.store.lock().unwrap();
        store.compacted = store.version + 1;
        store.history.clear();
    }

    /// Request lines received so far (`GET /api/v1/pods?watch=true…`).
    pub fn requests(&self) -> Vec<String> {
        self.store.lock().unwrap().requests.clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The resource (plural) and `namespace/name` of an object.
fn locate(object: &Value) -> anyhow::Result<(String, String)> {
    let kind = object["kind"].as_str().context("an object needs a kind")?;
    let resource = match kind {
        "Namespace" => "namespaces",
        "Pod" => "pods",
        "Service" => "services",
        "EndpointSlice" => "endpointslices",
        other => anyhow::bail!("the fake API server does not serve {other}"),
    };
    let meta = &object["metadata"];
    let name = meta["name"].as_str().context("an object needs metadata.name")?;
    let key = match meta["namespace"].as_str() {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_string(),
    };
    Ok((resource.to_string(), key))
}

async fn connection(stream: TcpStream, store: Arc<Mutex<Store>>, changes: watch::Receiver<u64>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut request = String::new();
        let mut line = String::new();
        // Request line and headers; these GETs have no body.
        loop {
            line.clear();
            match read.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) if request.is_empty() => request = line.trim().to_string(),
                Ok(_) => {}
            }
        }
        store.lock().unwrap().requests.push(request.clone());
        let Some(target) = request.split(' ').nth(1) else { return };
        let query = Query::parse(target);
        let served = if query.watch {
            watch_response(&mut write, &store, changes.clone(), &query).await
        } else {
            list_response(&mut write, &store, &query).await
        };
        if served.is_err() {
            return;
        }
    }
}

struct Query {
    resource: String,
    watch: bool,
    version: u64,
    labels: Vec<(String, String)>,
    fields: Vec<(String, String)>,
    timeout: Duration,
    /// A page's size (`limit`), and where the previous page ended (`continue`).
    limit: Option<usize>,
    after: Option<(u64, usize)>,
}

impl Query {
    fn parse(target: &str) -> Self {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut q = Query {
            resource: path.rsplit('/').next().unwrap_or("").to_string(),
            watch: false,
            version: 0,
            labels: Vec::new(),
            fields: Vec::new(),
            timeout: Duration::from_secs(290),
            limit: None,
            after: None,
        };
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value);
            match key {
                "watch" => q.watch = value == "true" || value == "1",
                "resourceVersion" => q.version = value.parse().unwrap_or(0),
                "labelSelector" => q.labels = selector(&value),
                "fieldSelector" => q.fields = selector(&value),
                "timeoutSeconds" => {
                    q.timeout = Duration::from_secs(value.parse().unwrap_or(290));
                }
                "limit" => q.limit = value.parse().ok().filter(|&n| n > 0),
                "continue" => {
                    q.after = value
                        .split_once('-')
                        .and_then(|(v, o)| Some((v.parse().ok()?, o.parse().ok()?)))
                }
                _ => {}
            }
        }
        q
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.labels.iter().all(|(k, v)| labels[k].as_str() == Some(v))
            && self.fields.iter().all(|(path, v)| {
                let field = path.split('.').fold(object, |o, part| &o[part]);
                field.as_str() == Some(v)
            })
    }

    fn api_version(&self) -> &'static str {
        if self.resource == "endpointslices" { "discovery.k8s.io/v1" } else { "v1" }
    }

    fn kind(&self) -> &'static str {
        match self.resource.as_str() {
            "namespaces" => "Namespace",
            "pods" => "Pod",
            "services" => "Service",
            _ => "EndpointSlice",
        }
    }
}

/// `a=b,c==d` as pairs (the equality selectors sockeye uses).
fn selector(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|term| {
            let (k, v) = term.split_once("==").or_else(|| term.split_once('='))?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn list_response(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    store: &Mutex<Store>,
    query: &Query,
) -> std::io::Result<()> {
    let body = {
        let store = store.lock().unwrap();
        // Pages as a real API server cuts them: `limit` items, then a `continue`
        // token; every page reports the first page's resourceVersion.
        let (version, skip) = query.after.unwrap_or((store.version, 0));
        let matching = store
            .objects
            .iter()
            .filter(|((resource, _), o)| *resource == query.resource && query.matches(o))
            .map(|(_, o)| o);
        let mut items: Vec<&Value> =
            matching.skip(skip).take(query.limit.unwrap_or(usize::MAX).saturating_add(1)).collect();
        let more = query.limit.is_some_and(|limit| items.len() > limit);
        let mut metadata = json!({"resourceVersion": version.to_string()});
        if let (true, Some(limit)) = (more, query.limit) {
            items.truncate(limit);
            metadata["continue"] = json!(format!("{version}-{}", skip + limit));
        }
        json!({
            "kind": format!("{}List", query.kind()),
            "apiVersion": query.api_version(),
            "metadata": metadata,
            "items": items,
        })
        .to_string()
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    write.write_all(head.as_bytes()).await?;
    write.write_all(body.as_bytes()).await
}

async fn watch_response(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    store: &Mutex<Store>,
    mut changes: watch::Receiver<u64>,
    query: &Query,
) -> std::io::Result<()> {
    write
        .write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await?;
    let deadline = tokio::time::Instant::now() + query.timeout;
    let mut seen = query.version;
    loop {
        let (events, version) = {
            let store = store.lock().unwrap();
            if seen < store.compacted {
                let gone = json!({"type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "reason": "Expired", "code": 410,
                    "message": format!("too old resource version: {seen} ({})", store.compacted),
                }});
                (vec![gone], None)
            } else {
                // The history is in version order: skip what this watch has seen.
                let start = store.history.partition_point(|c| c.version <= seen);
                let events = store.history[start..]
                    .iter()
                    .filter(|c| c.resource == query.resource)
                    .filter_map(|c| event(query, c))
                    .collect();
                (events, Some(store.version))
            }
        };
        for e in &events {
            chunk(write, &e.to_string()).await?;
        }
        let Some(version) = version else {
            return write.write_all(b"0\r\n\r\n").await;
        };
        seen = version;
        let woke = tokio::select! {
            () = tokio::time::sleep_until(deadline) => return write.write_all(b"0\r\n\r\n").await,
            woke = tokio::time::timeout(BOOKMARK_INTERVAL, changes.changed()) => woke,
        };
        if woke.is_err() {
            let bookmark = json!({"type": "BOOKMARK", "object": {
                "kind": query.kind(),
                "apiVersion": query.api_version(),
                "metadata": {"resourceVersion": seen.to_string()},
            }});
            chunk(write, &bookmark.to_string()).await?;
        }
    }
}

/// The watch event a change makes for this watch's selectors, if any.
fn event(query: &Query, change: &Change) -> Option<Value> {
    let was = change.old.as_ref().is_some_and(|o| query.matches(o));
    let is = change.new.as_ref().is_some_and(|o| query.matches(o));
    let (kind, object) = match (was, is) {
        (false, true) => ("ADDED", change.new.clone()?),
        (true, true) => ("MODIFIED", change.new.clone()?),
        (true, false) => {
            // Deleted, or no longer selected: the watch sees a DELETED at this version.
            let mut last = change.new.clone().or_else(|| change.old.clone())?;
            last["metadata"]["resourceVersion"] = json!(change.version.to_string());
            ("DELETED", last)
        }
        (false, false) => return None,
    };
    Some(json!({"type": kind, "object": object}))
}

async fn chunk(write: &mut tokio::net::tcp::OwnedWriteHalf, line: &str) -> std::io::Result<()> {
    let frame = format!("{:x}\r\n{line}\n\r\n", line.len() + 1);
    write.write_all(frame.as_bytes()).await
}
