//! Eviction in the kernel: when an endpoint is gone, the sockets of enrolled Pods that
//! are connected straight to it (headless Services, clients that resolved Pod IPs) are
//! destroyed, so the apps see an abort at once and reconnect to a live Pod.

use std::{path::PathBuf, sync::Arc, time::Instant};

use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use crate::{
    datapath::evict::destroy_connections_to,
    discovery::Desired,
    metrics::Metrics,
    state::{Lifecycle, Transition},
};

/// Evicts each endpoint that becomes Gone from every enrolled network namespace.
pub async fn run(
    mut transitions: broadcast::Receiver<Transition>,
    desired: watch::Receiver<Arc<Desired>>,
    metrics: Arc<Metrics>,
) {
    loop {
        let transition = match transitions.recv().await {
            Ok(t) if t.to == Lifecycle::Gone => t,
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                warn!("eviction missed {missed} endpoint transitions");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let netns = desired.borrow().enroll.clone();
        let started = Instant::now();
        let addr = transition.addr;
        let Ok(destroyed) = tokio::task::spawn_blocking(move || evict(&netns, addr)).await else {
            continue;
        };
        if destroyed > 0 {
            info!(endpoint = %addr, sockets = destroyed, elapsed = ?started.elapsed(), "evicted direct connections");
            metrics.evicted(&transition.service, destroyed);
        }
    }
}

fn evict(netns: &[PathBuf], addr: std::net::SocketAddr) -> usize {
    netns
        .iter()
        .map(|path| match destroy_connections_to(path, addr) {
            Ok(n) => n,
            Err(err) => {
                warn!(endpoint = %addr, netns = %path.display(), "cannot evict connections: {err}");
                0
            }
        })
        .sum()
}
