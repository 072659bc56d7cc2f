//! One endpoint's HTTP/1.1 connections: a small pool of idle keep-alive connections,
//! one request at a time on each, a new connection when none is idle.

use std::{net::SocketAddr, sync::Mutex, time::Duration};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::{proxy::body::ProxyBody, state::LocalOriginFailure};

/// Idle connections kept per endpoint.
const IDLE_MAX: usize = 32;

#[derive(Default)]
pub struct Http1Pool {
    idle: Mutex<Vec<SendRequest<ProxyBody>>>,
}

impl Http1Pool {
    /// An idle connection, or a new one.
    pub async fn take(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<SendRequest<ProxyBody>, LocalOriginFailure> {
        {
            let mut idle = self.idle.lock().unwrap();
            idle.retain(|s| !s.is_closed());
            if let Some(at) = idle.iter().position(SendRequest::is_ready) {
                return Ok(idle.swap_remove(at));
            }
        }
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(LocalOriginFailure::ConnectTimeout),
            Ok(Err(err)) => {
                debug!(endpoint = %addr, "connect failed: {err}");
                return Err(LocalOriginFailure::ConnectRefused);
            }
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            http1::handshake(TokioIo::new(stream)).await.map_err(|_| LocalOriginFailure::Reset)?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Gives a connection back once its request is sent; it is reused when its
    /// response has been read.
    pub fn give_back(&self, sender: SendRequest<ProxyBody>) {
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < IDLE_MAX && !sender.is_closed() {
            idle.push(sender);
        }
    }

    /// Drops every idle connection (the endpoint left rotation).
    pub fn clear(&self) {
        self.idle.lock().unwrap().clear();
    }
}
