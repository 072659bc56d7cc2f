//! Opaque TCP: one endpoint per connection, in round-robin order, moving on to the
//! next endpoint when a connect is refused or times out; then bytes both ways.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::refuse;
use crate::state::Service;

/// How long one connect attempt may take before the next endpoint is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn forward(mut client: TcpStream, service: Arc<Service>) {
    let Some((mut upstream, endpoint)) = connect_any(&service).await else {
        warn!(service = %service.name, "no endpoint accepted a connection");
        return refuse(client);
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => debug!(service = %service.name, %endpoint, up, down, "connection done"),
        Err(err) => debug!(service = %service.name, %endpoint, "connection ended: {err}"),
    }
}

async fn connect_any(service: &Service) -> Option<(TcpStream, SocketAddr)> {
    for endpoint in service.connect_order() {
        let endpoint = endpoint.addr;
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await {
            Ok(Ok(stream)) => return Some((stream, endpoint)),
            Ok(Err(err)) => debug!(service = %service.name, %endpoint, "connect failed: {err}"),
            Err(_) => debug!(service = %service.name, %endpoint, "connect timed out"),
        }
    }
    None
}
