//! Opaque TCP: one endpoint per connection, chosen like a request's (P2C), moving on
//! to another endpoint when a connect is refused or times out; then bytes both ways.

use std::{sync::Arc, time::Instant};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tracing::{debug, warn};

use crate::{
    balance::InFlight,
    state::{Endpoint, LocalOriginFailure, Outcome},
    upstream::Balancer,
};

pub async fn forward<S>(mut client: S, balancer: Arc<Balancer>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let service = &balancer.service;
    balancer.metrics.request(&service.name, service.protocol);
    let Some((mut upstream, endpoint)) = connect_any(&balancer).await else {
        warn!(service = %service.name, "no endpoint accepted a connection");
        return;
    };
    let _in_flight = InFlight::new(endpoint.clone());
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            debug!(service = %service.name, endpoint = %endpoint.addr, up, down, "connection done")
        }
        Err(err) => {
            debug!(service = %service.name, endpoint = %endpoint.addr, "connection ended: {err}")
        }
    }
}

async fn connect_any(balancer: &Balancer) -> Option<(TcpStream, Arc<Endpoint>)> {
    let service = &balancer.service;
    let timeout = service.policy().timeout.connect;
    let mut tried = Vec::new();
    loop {
        // The snapshot is released before the connect's await.
        let Some(endpoint) = balancer.select.pick(&service.endpoints(), &tried) else { break };
        tried.push(endpoint.clone());
        let started = Instant::now();
        let failure = match tokio::time::timeout(timeout, TcpStream::connect(endpoint.addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                crate::balance::pewma::observe(&endpoint.load, started.elapsed());
                return Some((stream, endpoint));
            }
            Ok(Err(err)) => {
                debug!(service = %service.name, endpoint = %endpoint.addr, "connect failed: {err}");
                LocalOriginFailure::ConnectRefused
            }
            Err(_) => LocalOriginFailure::ConnectTimeout,
        };
        service.report(&endpoint, Outcome::LocalOrigin(failure));
        balancer.metrics.upstream_error(&service.name, failure);
    }
    None
}
