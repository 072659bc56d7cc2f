//! One endpoint's upstream connections: the HTTP/2 connection, shared by every request
//! to it and remade when it dies, and a pool of HTTP/1.1 ones. Keepalive pings find a
//! dead or frozen peer (one that neither answers nor resets) within [`KEEPALIVE`]
//! twice over: a stream to a killed endpoint fails that fast, never stalls.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use http::{Request, Response};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::debug;

use super::{
    http1::{Http1Pool, is_upgrade},
    socket::{Socket, Sockets},
};
use crate::{proxy::body::ProxyBody, state::LocalOriginFailure};

/// Ping interval of an upstream connection with requests in flight, and how long a
/// ping may go unanswered.
pub const KEEPALIVE: Duration = Duration::from_millis(500);

/// An HTTP/2 client whose keepalive pings, every `interval` while a stream is open,
/// find a dead or frozen peer. An idle connection is not pinged: a node with hundreds
/// of pooled connections would spend its idle time on pings, and the endpoint's health
/// check watches it meanwhile.
pub fn h2_client(interval: Duration) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(interval)
        .keep_alive_timeout(interval)
        .keep_alive_while_idle(false);
    builder
}

/// Why a request got no response headers from the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("connecting failed: {0:?}")]
    Connect(LocalOriginFailure),
    /// REFUSED_STREAM, or GOAWAY before the stream: the endpoint never saw it.
    #[error("the endpoint refused the stream")]
    Refused,
    #[error("the connection or stream was reset before response headers")]
    Reset,
}

pub struct Upstream {
    pub addr: SocketAddr,
    /// Idle HTTP/1.1 connections, for clients that speak it.
    http1: Http1Pool,
    /// The HTTP/2 connection new requests go to.
    live: ArcSwapOption<http2::SendRequest<ProxyBody>>,
    /// The sockets of every connection still open, retired ones included.
    sockets: Sockets,
    /// One HTTP/2 connect at a time per endpoint; holds how the last one failed.
    connecting: tokio::sync::Mutex<Option<SendError>>,
    /// HTTP/2 connects that failed so far. A request that waited for a connect in
    /// flight fails with it rather than trying its own: against an endpoint that drops
    /// SYNs, each waiter would otherwise add a whole connect timeout to its wait.
    failed_connects: AtomicU64,
    /// Turns true when the endpoint is gone: requests in flight to it give up.
    closed: tokio::sync::watch::Sender<bool>,
}

impl Upstream {
    pub fn new(addr: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            addr,
            http1: Http1Pool::default(),
            live: ArcSwapOption::empty(),
            sockets: Sockets::default(),
            connecting: Default::default(),
            failed_connects: AtomicU64::new(0),
            closed: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Sends `req` and waits for its response headers: on the shared HTTP/2 connection,
    /// or on an idle (else new) HTTP/1.1 connection, which goes back to the pool once
    /// the response is read, unless the response turned it into a tunnel.
    pub async fn send(
        &self,
        req: Request<ProxyBody>,
        connect_timeout: Duration,
    ) -> Result<Response<Incoming>, SendError> {
        if req.version() == http::Version::HTTP_2 {
            let mut sender = self.h2_sender(connect_timeout).await?;
            sender.ready().await.map_err(|_| SendError::Reset)?;
            return sender.send_request(req).await.map_err(classify);
        }
        let mut sender = match self.http1.take() {
            Some(sender) => sender,
            None => self.http1_connect(connect_timeout).await?,
        };
        sender.ready().await.map_err(|_| SendError::Reset)?;
        let method = req.method().clone();
        let response = sender.send_request(req).await.map_err(classify)?;
        if !is_upgrade(&method, response.status()) {
            self.http1.give_back(sender);
        }
        Ok(response)
    }

    /// A sender on the live HTTP/2 connection, connecting first if there is none.
    async fn h2_sender(
        &self,
        connect_timeout: Duration,
    ) -> Result<http2::SendRequest<ProxyBody>, SendError> {
        if let Some(sender) = self.ready_sender() {
            return Ok(sender);
        }
        let failed_before = self.failed_connects.load(Ordering::Acquire);
        let mut last_failure = self.connecting.lock().await;
        if let Some(sender) = self.ready_sender() {
            return Ok(sender);
        }
        if let Some(failure) = *last_failure
            && self.failed_connects.load(Ordering::Acquire) != failed_before
        {
            return Err(failure);
        }
        match self.h2_connect(connect_timeout).await {
            Ok(sender) => {
                *last_failure = None;
                self.live.store(Some(Arc::new(sender.clone())));
                Ok(sender)
            }
            Err(failure) => {
                *last_failure = Some(failure);
                self.failed_connects.fetch_add(1, Ordering::Release);
                Err(failure)
            }
        }
    }

    async fn h2_connect(
        &self,
        connect_timeout: Duration,
    ) -> Result<http2::SendRequest<ProxyBody>, SendError> {
        let stream = self.connect(connect_timeout).await?;
        let (sender, connection) =
            h2_client(KEEPALIVE).handshake(TokioIo::new(stream)).await.map_err(|err| {
                debug!(endpoint = %self.addr, "h2 handshake failed: {err}");
                SendError::Reset
            })?;
        self.run(connection);
        Ok(sender)
    }

    async fn http1_connect(
        &self,
        connect_timeout: Duration,
    ) -> Result<http1::SendRequest<ProxyBody>, SendError> {
        let stream = self.connect(connect_timeout).await?;
        let (sender, connection) =
            http1::handshake(TokioIo::new(stream)).await.map_err(|_| SendError::Reset)?;
        self.run(connection.with_upgrades());
        Ok(sender)
    }

    /// A connection to the endpoint whose socket [`Upstream::close`] can shut down.
    async fn connect(&self, timeout: Duration) -> Result<Socket, SendError> {
        let stream = connect(self.addr, timeout).await?;
        self.sockets.track(stream).map_err(|err| {
            debug!(endpoint = %self.addr, "cannot keep a handle on the socket: {err}");
            SendError::Connect(LocalOriginFailure::ConnectRefused)
        })
    }

    /// Runs a connection until it ends.
    fn run<F, E>(&self, connection: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                debug!(endpoint = %addr, "upstream connection ended: {err}");
            }
        });
    }

    fn ready_sender(&self) -> Option<http2::SendRequest<ProxyBody>> {
        let live = self.live.load();
        live.as_ref().filter(|s| !s.is_closed()).map(|s| http2::SendRequest::clone(s))
    }

    /// No new requests: the connections close once their requests in flight are done.
    pub fn retire(&self) {
        self.live.store(None);
        self.http1.clear();
    }

    /// Resolves once the endpoint is gone ([`Upstream::close`]).
    pub async fn closed(&self) {
        let _ = self.closed.subscribe().wait_for(|closed| *closed).await;
    }

    /// Whether the endpoint is gone: its connections were closed on purpose.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Closes the connections now; requests in flight on them fail (and may be
    /// retried), streams and tunnels on them end.
    pub fn close(&self) {
        self.closed.send_replace(true);
        self.live.store(None);
        self.http1.clear();
        let connections = self.sockets.shut_down();
        debug!(endpoint = %self.addr, connections, "closed upstream connections");
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.close();
    }
}

/// A TCP connection to `addr`, with Nagle off (small frames go at once).
async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, SendError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(SendError::Connect(LocalOriginFailure::ConnectTimeout)),
        Ok(Err(err)) => {
            debug!(endpoint = %addr, "connect failed: {err}");
            return Err(SendError::Connect(LocalOriginFailure::ConnectRefused));
        }
        Ok(Ok(stream)) => stream,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Why hyper failed a request: a refused stream is safe to retry anywhere.
fn classify(err: hyper::Error) -> SendError {
    let refused = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .and_then(h2::Error::reason)
        .is_some_and(|r| r == h2::Reason::REFUSED_STREAM);
    if refused { SendError::Refused } else { SendError::Reset }
}

#[cfg(test)]
mod tests {
    use tokio::{net::TcpSocket, time::Instant};

    use super::*;
    use crate::proxy::body;

    const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

    /// A request to `upstream` over HTTP/2, as a task.
    fn send(upstream: &Arc<Upstream>) -> tokio::task::JoinHandle<Result<(), SendError>> {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let req = Request::builder()
                .version(http::Version::HTTP_2)
                .uri("http://greeter/")
                .body(body::empty())
                .unwrap();
            upstream.send(req, CONNECT_TIMEOUT).await.map(drop)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn requests_waiting_for_a_connect_that_times_out_fail_with_it() {
        // A listener whose accept queue is full: the kernel drops further SYNs, so a
        // connect hangs as it does to a Pod whose network is gone.
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let _queued = TcpStream::connect(addr).await.unwrap();
        let upstream = Upstream::new(addr);

        let started = Instant::now();
        let sends: Vec<_> = (0..3).map(|_| send(&upstream)).collect();
        for send in sends {
            let failure = send.await.unwrap();
            assert_eq!(failure, Err(SendError::Connect(LocalOriginFailure::ConnectTimeout)));
        }
        assert_eq!(started.elapsed(), CONNECT_TIMEOUT, "the waiters did not dial again");

        // A request after the failure dials anew.
        let started = Instant::now();
        let again = send(&upstream).await.unwrap();
        assert_eq!(again, Err(SendError::Connect(LocalOriginFailure::ConnectTimeout)));
        assert_eq!(started.elapsed(), CONNECT_TIMEOUT);
    }
}
