//! One endpoint's idle HTTP/1.1 connections: a small pool of keep-alive connections,
//! one request at a time on each.

use std::sync::{Mutex, MutexGuard};

use http::{Method, StatusCode};
use hyper::client::conn::http1::SendRequest;

use crate::proxy::body::ProxyBody;

/// Idle connections kept per endpoint.
const IDLE_MAX: usize = 32;

#[derive(Default)]
pub struct Http1Pool {
    idle: Mutex<Vec<SendRequest<ProxyBody>>>,
}

impl Http1Pool {
    /// An idle connection ready for a request, if there is one.
    pub fn take(&self) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.idle();
        idle.retain(|s| !s.is_closed());
        let at = idle.iter().position(SendRequest::is_ready)?;
        Some(idle.swap_remove(at))
    }

    /// Gives a connection back once its request is sent; it is reused when its
    /// response has been read.
    pub fn give_back(&self, sender: SendRequest<ProxyBody>) {
        let mut idle = self.idle();
        if idle.len() < IDLE_MAX && !sender.is_closed() {
            idle.push(sender);
        }
    }

    /// Drops every idle connection (the endpoint left rotation).
    pub fn clear(&self) {
        self.idle().clear();
    }

    fn idle(&self) -> MutexGuard<'_, Vec<SendRequest<ProxyBody>>> {
        crate::sync::lock(&self.idle)
    }
}

/// Whether a response turns its connection into a byte tunnel: 101 Switching
/// Protocols (an HTTP/1.1 Upgrade), or a 2xx to CONNECT.
pub fn is_upgrade(method: &Method, status: StatusCode) -> bool {
    status == StatusCode::SWITCHING_PROTOCOLS || (method == Method::CONNECT && status.is_success())
}
