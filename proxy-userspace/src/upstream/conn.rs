//! One endpoint's upstream connections: the HTTP/2 connection, shared by every request
//! to it and remade when it dies, and a pool of HTTP/1.1 ones. Keepalive pings find a
//! dead or frozen peer (one that neither answers nor resets) within [`KEEPALIVE`]
//! twice over.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwapOption;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpStream, task::AbortHandle};
use tracing::debug;

use super::http1::Http1Pool;
use crate::{proxy::body::ProxyBody, state::LocalOriginFailure};

/// Ping interval, and how long a ping may go unanswered.
pub const KEEPALIVE: Duration = Duration::from_millis(500);

/// An HTTP/2 client whose keepalive pings find a dead or frozen peer.
pub fn h2_client() -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true);
    builder
}

pub struct Upstream {
    pub addr: SocketAddr,
    /// HTTP/1.1 connections, for clients that speak it.
    pub http1: Http1Pool,
    /// The connection new requests go to.
    live: ArcSwapOption<SendRequest<ProxyBody>>,
    /// Every connection still running, retired ones included.
    tasks: Mutex<Vec<AbortHandle>>,
    /// One connect at a time per endpoint.
    connecting: tokio::sync::Mutex<()>,
    /// Turns true when the endpoint is gone: requests in flight to it give up.
    closed: tokio::sync::watch::Sender<bool>,
}

impl Upstream {
    pub fn new(addr: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            addr,
            http1: Http1Pool::default(),
            live: ArcSwapOption::empty(),
            tasks: Mutex::default(),
            connecting: Default::default(),
            closed: tokio::sync::watch::Sender::new(false),
        })
    }

    /// A sender on a live connection, connecting first if there is none.
    pub async fn sender(
        &self,
        connect_timeout: Duration,
    ) -> Result<SendRequest<ProxyBody>, LocalOriginFailure> {
        if let Some(sender) = self.ready_sender() {
            return Ok(sender);
        }
        let _one = self.connecting.lock().await;
        if let Some(sender) = self.ready_sender() {
            return Ok(sender);
        }
        let stream =
            match tokio::time::timeout(connect_timeout, TcpStream::connect(self.addr)).await {
                Err(_) => return Err(LocalOriginFailure::ConnectTimeout),
                Ok(Err(err)) => {
                    debug!(endpoint = %self.addr, "connect failed: {err}");
                    return Err(LocalOriginFailure::ConnectRefused);
                }
                Ok(Ok(stream)) => stream,
            };
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            h2_client().handshake(TokioIo::new(stream)).await.map_err(|err| {
                debug!(endpoint = %self.addr, "h2 handshake failed: {err}");
                LocalOriginFailure::Reset
            })?;
        let addr = self.addr;
        let task = tokio::spawn(async move {
            if let Err(err) = connection.await {
                debug!(endpoint = %addr, "upstream connection ended: {err}");
            }
        })
        .abort_handle();
        let mut tasks = self.tasks.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        self.live.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }

    fn ready_sender(&self) -> Option<SendRequest<ProxyBody>> {
        let live = self.live.load();
        live.as_ref().filter(|s| !s.is_closed()).map(|s| SendRequest::clone(s))
    }

    /// No new requests: the connection closes once its requests in flight are done.
    pub fn retire(&self) {
        self.live.store(None);
        self.http1.clear();
    }

    /// Resolves once the endpoint is gone ([`Upstream::close`]).
    pub async fn closed(&self) {
        let _ = self.closed.subscribe().wait_for(|closed| *closed).await;
    }

    /// Closes the connection now; requests in flight on it fail (and may be retried).
    pub fn close(&self) {
        self.closed.send_replace(true);
        self.live.store(None);
        self.http1.clear();
        let tasks: Vec<AbortHandle> = self.tasks.lock().unwrap().drain(..).collect();
        debug!(endpoint = %self.addr, connections = tasks.len(), "closing upstream connections");
        for task in tasks {
            task.abort();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.close();
    }
}
