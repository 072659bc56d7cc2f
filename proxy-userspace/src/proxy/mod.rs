//! The proxy: accepts the connections the kernel steered here, finds each one's
//! original destination and service, and serves it: gRPC, other HTTP/2 and HTTP/1.1
//! per request, anything else as opaque TCP. Anything the kernel did not redirect is
//! refused: the listener is not an open proxy.

mod admission;
pub mod body;
mod call;
pub mod grpc;
mod h2;
mod http1;
pub mod sniff;
mod tcp;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use admission::{Admission, Overflow, Ticket};

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::{
    config::{Limits, Protocol},
    datapath::{Datapath, DatapathError},
    drain::DrainWatch,
    metrics::Metrics,
    state::{InUse, Service, State},
    upstream::Balancer,
    workers::Workers,
};

/// How long a client of a gRPC or HTTP service may stay silent before its connection
/// is served as opaque TCP.
const SNIFF_PATIENCE: Duration = Duration::from_secs(1);

pub struct Proxy {
    datapath: Arc<dyn Datapath>,
    state: Arc<State>,
    balancers: Mutex<HashMap<SocketAddr, Arc<Balancer>>>,
    drain: DrainWatch,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// Downstream connections being served, against the caps.
    admission: Arc<Admission>,
    /// Where each connection is served.
    workers: Arc<Workers>,
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the kernel did not redirect this connection")]
    NotRedirected,
    #[error("original destination {0} is not a known service")]
    UnknownService(SocketAddr),
    #[error(transparent)]
    Overflow(#[from] Overflow),
    #[error("cannot read the connection's addresses: {0}")]
    Socket(#[from] std::io::Error),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

impl Proxy {
    /// A proxy whose connections follow `drain`: when it drains, HTTP/2 clients get
    /// GOAWAY and HTTP/1.1 ones `Connection: close`, and their requests in flight
    /// finish; when it closes, whatever is still open is dropped. Connections are
    /// served on `workers`.
    pub fn new(
        datapath: Arc<dyn Datapath>,
        state: Arc<State>,
        drain: DrainWatch,
        metrics: Arc<Metrics>,
        limits: Limits,
        workers: Arc<Workers>,
    ) -> Arc<Self> {
        let admission = Admission::new(limits, datapath.clone(), metrics.clone());
        Arc::new(Self {
            datapath,
            state,
            balancers: Mutex::default(),
            drain,
            metrics,
            limits,
            admission,
            workers,
        })
    }

    /// Downstream connections open now.
    pub fn open_connections(&self) -> usize {
        self.admission.open()
    }

    /// Waits until no downstream connection is open, at most `limit`; returns how many
    /// are still open.
    pub async fn wait_idle(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let open = self.admission.open();
            if open == 0 || tokio::time::Instant::now() >= deadline {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Accepts connections on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut spare = Spare::open();
        loop {
            let (stream, client) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) if is_out_of_descriptors(&err) => {
                    // New connects fail open from now on; the one waiting is reset
                    // rather than left hanging.
                    self.admission.out_of_descriptors();
                    spare.refuse_one(&listener).await;
                    continue;
                }
                Err(err) => {
                    warn!("accept failed: {err}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            match self.route(&stream, client) {
                Ok((in_use, ticket)) => {
                    let balancer = self.balancer(in_use.service().clone());
                    let drain = self.drain.clone();
                    self.workers.serve(stream, |stream| async move {
                        in_use.warmed().await;
                        serve_connection(stream, balancer, drain).await;
                        drop((ticket, in_use));
                    });
                }
                Err(refusal) => {
                    debug!(%client, "refused: {refusal}");
                    refuse(stream);
                }
            }
        }
    }

    /// The service the kernel steered this connection to (started by it if it was
    /// not in use), and its place among the connections the agent and its Pod hold.
    pub fn route(
        &self,
        stream: &TcpStream,
        client: SocketAddr,
    ) -> Result<(InUse, Ticket), Refusal> {
        let local = stream.local_addr()?;
        let orig = self.datapath.take_orig_dst(client, local)?.ok_or(Refusal::NotRedirected)?;
        let dst = SocketAddr::from(orig.dst);
        let service = self.state.open(&dst).ok_or(Refusal::UnknownService(dst))?;
        let ticket = self.admission.admit(orig.netns)?;
        Ok((service, ticket))
    }

    /// The balancer of `service`, made anew when the service was replaced; those of
    /// services stopped for want of use are dropped.
    fn balancer(&self, service: Arc<Service>) -> Arc<Balancer> {
        let mut balancers = crate::sync::lock(&self.balancers);
        balancers.retain(|vip, b| {
            self.state.lookup(vip).is_some_and(|s| Arc::ptr_eq(&s, &b.service) && s.demand.active())
        });
        let metrics = &self.metrics;
        balancers
            .entry(service.vip)
            .or_insert_with(|| {
                Balancer::new(service, metrics.clone(), self.limits.max_connections_per_endpoint)
            })
            .clone()
    }
}

/// How long a connection served as opaque TCP for want of HTTP (a gRPC or HTTP
/// service's client that sent something else, or nothing) may stay silent both ways.
const FALLBACK_IDLE: Duration = Duration::from_secs(300);

async fn serve_connection(mut stream: TcpStream, balancer: Arc<Balancer>, drain: DrainWatch) {
    let _ = stream.set_nodelay(true);
    let metrics = balancer.metrics.clone();
    if balancer.service.protocol == Protocol::Tcp {
        let _open = metrics.connection("tcp");
        drain.until_closed(tcp::forward(stream, balancer, None)).await;
        return;
    }
    let (protocol, seen) = sniff::sniff(&mut stream, SNIFF_PATIENCE).await;
    if seen.is_empty() && !client_speaks(&stream).await {
        return;
    }
    let stream = sniff::Prefixed::new(seen, stream);
    match protocol {
        sniff::Protocol::H2 => {
            let _open = metrics.connection("h2");
            h2::serve(stream, balancer, drain).await
        }
        sniff::Protocol::Http1 => {
            let _open = metrics.connection("http1");
            http1::serve(stream, balancer, drain).await
        }
        sniff::Protocol::Opaque => {
            let _open = metrics.connection("tcp");
            let forward = tcp::forward(stream, balancer, Some(FALLBACK_IDLE));
            drain.until_closed(forward).await;
        }
    }
}

/// Waits (at most [`FALLBACK_IDLE`]) for a silent client to send something, so that
/// no backend is dialled for a client that says nothing; false if it closed or stayed
/// silent.
async fn client_speaks(stream: &TcpStream) -> bool {
    let first = tokio::time::timeout(FALLBACK_IDLE, stream.peek(&mut [0u8; 1])).await;
    matches!(first, Ok(Ok(1..)))
}

/// Closes with a reset, so the peer sees a refusal rather than an empty stream.
fn refuse(stream: TcpStream) {
    let _ = stream.set_zero_linger();
}

/// How long the accept loop waits after an error other than running out of
/// descriptors, rather than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

fn is_out_of_descriptors(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// A descriptor kept in reserve, so that a connection waiting while the agent is out of
/// descriptors can still be accepted, and refused, instead of hanging.
struct Spare(Option<std::fs::File>);

impl Spare {
    fn open() -> Self {
        Self(std::fs::File::open("/dev/null").ok())
    }

    async fn refuse_one(&mut self, listener: &TcpListener) {
        match self.0.take() {
            Some(spare) => {
                drop(spare);
                if let Ok((stream, client)) = listener.accept().await {
                    debug!(%client, "refused: out of descriptors");
                    refuse(stream);
                }
                *self = Self::open();
            }
            None => tokio::time::sleep(ACCEPT_BACKOFF).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::{
        config::{Policy, Protocol, policy::HealthPolicy},
        datapath::Recorder,
        discovery::{Condition, DesiredEndpoint, DesiredService},
    };

    async fn proxy_to(backend: SocketAddr) -> (Arc<Recorder>, SocketAddr, SocketAddr) {
        let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let state = Arc::new(State::default());
        state.apply(&[DesiredService {
            name: "echo".into(),
            vip,
            protocol: Protocol::Tcp,
            policy: Policy {
                health: HealthPolicy { enabled: false, ..Default::default() },
                ..Default::default()
            },
            endpoints: vec![DesiredEndpoint { addr: backend, condition: Condition::Ready }],
        }]);
        let (recorder, proxy_addr) = serve(state).await;
        (recorder, proxy_addr, vip)
    }

    /// A proxy for `state` on a loopback port, with a recorder for its datapath.
    async fn serve(state: Arc<State>) -> (Arc<Recorder>, SocketAddr) {
        let recorder = Arc::new(Recorder::default());
        let metrics = Metrics::new(recorder.clone(), state.clone());
        let workers = Arc::new(Workers::start(1).unwrap());
        let limits = Limits::default();
        let proxy =
            Proxy::new(recorder.clone(), state, DrainWatch::never(), metrics, limits, workers);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(proxy.serve(listener));
        (recorder, addr)
    }

    #[tokio::test]
    async fn redirected_connections_are_forwarded_and_others_reset() {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_addr = backend.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = backend.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let (recorder, proxy_addr, vip) = proxy_to(backend_addr).await;

        // Not redirected: no original destination was filed for this client.
        let mut stray = TcpStream::connect(proxy_addr).await.unwrap();
        let err = stray.read(&mut [0; 1]).await.expect_err("reset");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);

        // Redirected: file the original destination the way the kernel would.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        recorder.orig_dst.lock().unwrap().insert(socket.local_addr().unwrap(), (vip, 1));
        let mut client = socket.connect(proxy_addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut client, b"ping").await.unwrap();
        let mut buf = [0; 4];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }

    /// An HTTP/1.1 backend: `ok_for_get` answers GET with 200, everything else 503.
    async fn http_backend(ok_for_get: bool, posts: Arc<AtomicUsize>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let posts = posts.clone();
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let posts = posts.clone();
                        async move {
                            if req.method() == http::Method::POST {
                                posts.fetch_add(1, Ordering::Relaxed);
                            }
                            let ok = ok_for_get && req.method() == http::Method::GET;
                            let mut response = http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from("hi"),
                            ));
                            *response.status_mut() = if ok {
                                http::StatusCode::OK
                            } else {
                                http::StatusCode::SERVICE_UNAVAILABLE
                            };
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(io, service),
                );
            }
        });
        addr
    }

    #[tokio::test]
    async fn http1_gets_are_retried_elsewhere_and_posts_never() {
        let posts = Arc::new(AtomicUsize::new(0));
        let good = http_backend(true, posts.clone()).await;
        let bad = http_backend(false, posts.clone()).await;
        let vip: SocketAddr = "10.96.0.11:80".parse().unwrap();
        let state = Arc::new(State::default());
        let mut policy = Policy::default();
        policy.health.enabled = false;
        let endpoint = |addr| DesiredEndpoint { addr, condition: Condition::Ready };
        state.apply(&[DesiredService {
            name: "web".into(),
            vip,
            protocol: Protocol::Http,
            policy,
            endpoints: vec![endpoint(good), endpoint(bad)],
        }]);
        let started = state.open(&vip).unwrap();
        started.watch_endpoints().wait_for(|set| set.ready.len() == 2).await.unwrap();
        let (recorder, proxy_addr) = serve(state).await;

        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        recorder.orig_dst.lock().unwrap().insert(socket.local_addr().unwrap(), (vip, 1));
        let stream = socket.connect(proxy_addr).await.unwrap();
        let (mut client, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = |method: http::Method| {
            http::Request::builder()
                .method(method)
                .uri("/")
                .header("host", "web")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap()
        };
        for _ in 0..10 {
            let response = client.send_request(request(http::Method::GET)).await.unwrap();
            assert_eq!(
                response.status(),
                200,
                "a GET answered 503 is retried on the other endpoint"
            );
            http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
        }
        for _ in 0..5 {
            let response = client.send_request(request(http::Method::POST)).await.unwrap();
            assert_eq!(response.status(), 503);
            http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
        }
        assert_eq!(posts.load(Ordering::Relaxed), 5, "a POST is never sent twice");
    }
}
