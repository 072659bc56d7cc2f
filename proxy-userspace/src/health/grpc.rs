//! The gRPC check: `grpc.health.v1.Health`. Watch streams every status change, so a
//! backend turning NOT_SERVING leaves rotation at once; a backend without Watch
//! (UNIMPLEMENTED) is polled with Check. The messages are tonic-health's prost types;
//! a response bigger than [`messages::MAX_MESSAGE`] ends the check as failed.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{
    Results,
    messages::{self, next_status},
    pause,
};
use crate::{config::policy::HealthPolicy, state::lifecycle::Check, upstream::h2_client};

const UNIMPLEMENTED: u32 = 12;

/// What one Watch call ended with.
enum Watched {
    /// The backend has no Watch: poll Check instead.
    Unimplemented,
    /// The stream ended or broke; the owner was told.
    Ended,
    /// The owner stopped listening.
    Stopped,
}

pub async fn run(addr: SocketAddr, policy: &HealthPolicy, results: &Results) {
    let mut watch = true;
    loop {
        let outcome = match connect(addr, policy).await {
            None => Some(Check::Fail),
            Some(sender) if watch => match watch_until_end(addr, sender, policy, results).await {
                Watched::Unimplemented => {
                    watch = false;
                    continue;
                }
                Watched::Ended => Some(Check::Fail),
                Watched::Stopped => return,
            },
            Some(mut sender) => Some(check_once(&mut sender, policy).await),
        };
        if let Some(check) = outcome
            && results.send((addr, check)).is_err()
        {
            return;
        }
        tokio::time::sleep(pause(policy)).await;
    }
}

async fn connect(addr: SocketAddr, policy: &HealthPolicy) -> Option<SendRequest<Full<Bytes>>> {
    let stream = tokio::time::timeout(policy.timeout, TcpStream::connect(addr)).await.ok()?.ok()?;
    let _ = stream.set_nodelay(true);
    // A Watch stream stays open: its connection is pinged every check timeout, which
    // finds a frozen backend that would otherwise just stay silent.
    let (sender, connection) =
        h2_client(policy.timeout).handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// Streams Watch updates to the owner until the stream ends.
async fn watch_until_end(
    addr: SocketAddr,
    mut sender: SendRequest<Full<Bytes>>,
    policy: &HealthPolicy,
    results: &Results,
) -> Watched {
    let Ok(response) = sender.send_request(request("Watch", &policy.grpc_service_name)).await
    else {
        return Watched::Ended;
    };
    if grpc_status(response.headers()) == Some(UNIMPLEMENTED) {
        return Watched::Unimplemented;
    }
    let mut body = response.into_body();
    let mut buffer = BytesMut::new();
    // Watch speaks only on change, so a SERVING that holds is counted again each
    // interval until it makes `healthy_threshold` checks in a row; past that another
    // pass changes nothing, and the endpoint costs only its connection's pings.
    let mut last = None;
    let mut repeats = 0;
    let mut ticker = tokio::time::interval(pause(policy));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.reset();
    loop {
        let repeating = last == Some(Check::Pass) && repeats < policy.healthy_threshold;
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = ticker.tick(), if repeating => {
                repeats += 1;
                if results.send((addr, Check::Pass)).is_err() {
                    return Watched::Stopped;
                }
                continue;
            }
        };
        let Some(Ok(frame)) = frame else { return Watched::Ended };
        if let Some(trailers) = frame.trailers_ref() {
            return if grpc_status(trailers) == Some(UNIMPLEMENTED) {
                Watched::Unimplemented
            } else {
                Watched::Ended
            };
        }
        if let Ok(data) = frame.into_data() {
            buffer.extend_from_slice(&data);
            loop {
                let check = match next_status(&mut buffer) {
                    Ok(Some(true)) => Check::Pass,
                    Ok(Some(false)) => Check::FailNow,
                    Ok(None) => break,
                    // A backend that answers garbage is not healthy.
                    Err(_) => return Watched::Ended,
                };
                (last, repeats) = (Some(check), 0);
                ticker.reset();
                if results.send((addr, check)).is_err() {
                    return Watched::Stopped;
                }
            }
        }
    }
}

async fn check_once(sender: &mut SendRequest<Full<Bytes>>, policy: &HealthPolicy) -> Check {
    let call = async {
        let response =
            sender.send_request(request("Check", &policy.grpc_service_name)).await.ok()?;
        let body = http_body_util::Limited::new(response.into_body(), messages::MAX_BODY);
        let body = body.collect().await.ok()?.to_bytes();
        next_status(&mut BytesMut::from(&body[..])).ok()?
    };
    match tokio::time::timeout(policy.timeout, call).await {
        Ok(Some(true)) => Check::Pass,
        _ => Check::Fail,
    }
}

fn request(method: &str, service: &str) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("http://sockeye/grpc.health.v1.Health/{method}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Full::new(messages::request(service)))
        .unwrap_or_default()
}

fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    crate::proxy::grpc::status(headers)
}
