//! Upgrades: an HTTP/1.1 `Upgrade` answered 101 (WebSocket, h2c) or a CONNECT answered
//! 2xx (HTTP/1.1, or HTTP/2 extended CONNECT) turns the call into a byte tunnel
//! between the client and that endpoint. It stays open until either side closes or
//! the endpoint is gone, and counts as a request in flight meanwhile (a drain waits
//! for it until its deadline).

use std::sync::Arc;

use http::{Method, Request, header::UPGRADE};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::{balance::InFlight, metrics::Metrics, upstream::Upstream};

/// Whether a request asks to become a tunnel.
pub fn wanted<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT || req.headers().contains_key(UPGRADE)
}

/// A tunnel's two ends, each available once its side has switched protocols.
pub struct Ends {
    pub client: OnUpgrade,
    pub endpoint: OnUpgrade,
}

/// Runs the tunnel in a task of its own.
pub fn open(
    ends: Ends,
    upstream: Arc<Upstream>,
    in_flight: InFlight,
    metrics: &Metrics,
    service: &str,
    connect: bool,
) {
    let kind = if connect { "connect" } else { "upgrade" };
    let open = metrics.tunnel(service, kind);
    let addr = upstream.addr;
    tokio::spawn(async move {
        let _counted = (open, in_flight);
        let (client, endpoint) = match tokio::try_join!(ends.client, ends.endpoint) {
            Ok(ends) => ends,
            Err(err) => return debug!(endpoint = %addr, "the upgrade did not complete: {err}"),
        };
        let (mut client, mut endpoint) = (TokioIo::new(client), TokioIo::new(endpoint));
        tokio::select! {
            result = tokio::io::copy_bidirectional(&mut client, &mut endpoint) => match result {
                Ok((up, down)) => debug!(endpoint = %addr, up, down, "tunnel closed"),
                Err(err) => debug!(endpoint = %addr, "tunnel ended: {err}"),
            },
            () = upstream.closed() => debug!(endpoint = %addr, "tunnel closed: the endpoint is gone"),
        }
    });
}
