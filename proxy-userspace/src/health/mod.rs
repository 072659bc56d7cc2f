//! Active health checks, one task per endpoint, each sending what it finds to the
//! service's lifecycle owner: `grpc.health.v1` for gRPC services (Watch where the
//! backend has it, Check polling otherwise), an HTTP GET for HTTP services, a TCP
//! connect for TCP services.

mod grpc;
mod http;
pub mod messages;

use std::{net::SocketAddr, time::Duration};

use tokio::{net::TcpStream, sync::mpsc, task::JoinHandle};

use crate::{
    config::{Protocol, policy::HealthPolicy},
    state::lifecycle::Check,
};

/// Where checkers send their findings.
pub type Results = mpsc::UnboundedSender<(SocketAddr, Check)>;

/// The health seam: starts checking one endpoint until the handle is aborted.
pub trait Checker: Send + Sync + 'static {
    fn start(
        &self,
        addr: SocketAddr,
        protocol: Protocol,
        policy: HealthPolicy,
        results: Results,
    ) -> JoinHandle<()>;
}

/// The real checks, by protocol.
#[derive(Debug, Default)]
pub struct Active;

impl Checker for Active {
    fn start(
        &self,
        addr: SocketAddr,
        protocol: Protocol,
        policy: HealthPolicy,
        results: Results,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            match protocol {
                Protocol::Grpc => grpc::run(addr, &policy, &results).await,
                Protocol::Http => poll(addr, &policy, &results, http::check).await,
                Protocol::Tcp => poll(addr, &policy, &results, tcp_check).await,
            }
        })
    }
}

/// Checks every interval (plus jitter) until the owner stops listening.
async fn poll<F, Fut>(addr: SocketAddr, policy: &HealthPolicy, results: &Results, check: F)
where
    F: Fn(SocketAddr, HealthPolicy) -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        let passed = tokio::time::timeout(policy.timeout, check(addr, policy.clone()))
            .await
            .unwrap_or(false);
        if results.send((addr, if passed { Check::Pass } else { Check::Fail })).is_err() {
            return;
        }
        tokio::time::sleep(pause(policy)).await;
    }
}

async fn tcp_check(addr: SocketAddr, _: HealthPolicy) -> bool {
    TcpStream::connect(addr).await.is_ok()
}

/// The interval plus a random share of the jitter.
fn pause(policy: &HealthPolicy) -> Duration {
    let jitter = policy.interval_jitter.as_nanos() as u64;
    let random =
        std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), std::time::Instant::now());
    policy.interval + Duration::from_nanos(if jitter == 0 { 0 } else { random % jitter })
}

/// A checker that checks nothing: tests send findings through the owner's channel.
#[derive(Debug, Default)]
pub struct Manual;

impl Checker for Manual {
    fn start(&self, _: SocketAddr, _: Protocol, _: HealthPolicy, _: Results) -> JoinHandle<()> {
        tokio::spawn(async {})
    }
}

#[cfg(test)]
mod tests;
