//! The gRPC check: `grpc.health.v1.Health`. Watch streams every status change, so a
//! backend turning NOT_SERVING leaves rotation at once; a backend without Watch
//! (UNIMPLEMENTED) is polled with Check. The messages are tonic-health's prost types,
//! spoken over h2 directly; a response bigger than [`messages::MAX_MESSAGE`] ends the
//! check as failed.
//!
//! A Watch stays silent while the status holds, and so does a frozen backend: the
//! connection is pinged every check timeout, and a ping unanswered by the next one ends
//! the Watch as failed. The pings of every check fall on the same ticks ([`beat`]), so
//! a node checking a thousand endpoints wakes once a period for all of them rather
//! than a thousand times.

use std::{
    net::SocketAddr,
    sync::OnceLock,
    task::{Context, Waker},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use h2::{PingPong, RecvStream, client::SendRequest};
use tokio::{
    net::TcpStream,
    time::{Instant, Interval, MissedTickBehavior},
};

use super::{
    Results,
    messages::{self, next_status},
    pause,
};
use crate::{config::policy::HealthPolicy, state::lifecycle::Check};

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
            Some(conn) if watch => match watch_until_end(addr, conn, policy, results).await {
                Watched::Unimplemented => {
                    watch = false;
                    continue;
                }
                Watched::Ended => Some(Check::Fail),
                Watched::Stopped => return,
            },
            Some(conn) => Some(check_once(conn, policy).await),
        };
        if let Some(check) = outcome
            && results.send((addr, check)).is_err()
        {
            return;
        }
        tokio::time::sleep(pause(policy)).await;
    }
}

/// An HTTP/2 connection to the endpoint; it closes when this is dropped.
struct Conn {
    sender: SendRequest<Bytes>,
    pings: PingPong,
}

async fn connect(addr: SocketAddr, policy: &HealthPolicy) -> Option<Conn> {
    let handshake = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let _ = stream.set_nodelay(true);
        h2::client::handshake(stream).await.ok()
    };
    let (sender, mut connection) = tokio::time::timeout(policy.timeout, handshake).await.ok()??;
    let pings = connection.ping_pong()?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(endpoint = %addr, "health check connection ended: {err}");
        }
    });
    Some(Conn { sender, pings })
}

impl Conn {
    /// Calls `method` and returns the response headers and body.
    async fn call(&self, method: &str, service: &str) -> Option<(http::HeaderMap, RecvStream)> {
        let mut sender = self.sender.clone().ready().await.ok()?;
        let (response, mut body) = sender.send_request(request(method), false).ok()?;
        body.send_data(messages::request(service), true).ok()?;
        let (parts, body) = response.await.ok()?.into_parts();
        Some((parts.headers, body))
    }
}

/// What the next read of a Watch body gave.
enum Read {
    Data(Bytes),
    /// The stream ended; the gRPC status in its trailers, if any.
    End(Option<u32>),
    Broken,
}

async fn read(body: &mut RecvStream) -> Read {
    match body.data().await {
        Some(Ok(data)) => {
            let _ = body.flow_control().release_capacity(data.len());
            Read::Data(data)
        }
        Some(Err(_)) => Read::Broken,
        None => match body.trailers().await {
            Ok(trailers) => Read::End(trailers.as_ref().and_then(grpc_status)),
            Err(_) => Read::Broken,
        },
    }
}

/// Streams Watch updates to the owner until the stream ends or a ping goes unanswered.
async fn watch_until_end(
    addr: SocketAddr,
    mut conn: Conn,
    policy: &HealthPolicy,
    results: &Results,
) -> Watched {
    // Pings start with the stream: until its headers come, the timeout bounds the wait.
    let call = tokio::time::timeout(policy.timeout, conn.call("Watch", &policy.grpc_service_name));
    let Ok(Some((headers, mut body))) = call.await else {
        return Watched::Ended;
    };
    if grpc_status(&headers) == Some(UNIMPLEMENTED) {
        return Watched::Unimplemented;
    }
    let mut buffer = BytesMut::new();
    // Watch speaks only on change, so a SERVING that holds is counted again each
    // interval until it makes `healthy_threshold` checks in a row; past that another
    // pass changes nothing, and the endpoint costs only its connection's pings.
    let mut last = None;
    let mut repeats = 0;
    let mut ticker = tokio::time::interval(pause(policy));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.reset();
    let mut beat = beat(policy.timeout);
    loop {
        let repeating = last == Some(Check::Pass) && repeats < policy.healthy_threshold;
        let data = tokio::select! {
            read = read(&mut body) => match read {
                Read::Data(data) => data,
                Read::End(Some(UNIMPLEMENTED)) => return Watched::Unimplemented,
                Read::End(_) | Read::Broken => return Watched::Ended,
            },
            _ = ticker.tick(), if repeating => {
                repeats += 1;
                if results.send((addr, Check::Pass)).is_err() {
                    return Watched::Stopped;
                }
                continue;
            }
            _ = beat.tick() => {
                // A pong to the last ping, looked at now rather than waited for (it
                // costs no wakeup), makes way for the next; a ping still unanswered
                // one beat on, or a closed connection, refuses it.
                let _ = conn.pings.poll_pong(&mut Context::from_waker(Waker::noop()));
                if conn.pings.send_ping(h2::Ping::opaque()).is_err() {
                    return Watched::Ended;
                }
                continue;
            }
        };
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

/// Ticks every `period` on the multiples of it since the first beat the process
/// made: every check with the same timeout pings at the same instants, in one wakeup.
pub(super) fn beat(period: Duration) -> Interval {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let since = Instant::now().saturating_duration_since(epoch);
    let periods = since.as_nanos() / period.as_nanos().max(1) + 1;
    let first = epoch + period.saturating_mul(u32::try_from(periods).unwrap_or(u32::MAX));
    let mut beat = tokio::time::interval_at(first, period);
    beat.set_missed_tick_behavior(MissedTickBehavior::Skip);
    beat
}

async fn check_once(conn: Conn, policy: &HealthPolicy) -> Check {
    let call = async {
        let (_, mut body) = conn.call("Check", &policy.grpc_service_name).await?;
        let mut buffer = BytesMut::new();
        while let Read::Data(data) = read(&mut body).await {
            if buffer.len() + data.len() > messages::MAX_BODY {
                return None;
            }
            buffer.extend_from_slice(&data);
        }
        next_status(&mut buffer).ok()?
    };
    match tokio::time::timeout(policy.timeout, call).await {
        Ok(Some(true)) => Check::Pass,
        _ => Check::Fail,
    }
}

fn request(method: &str) -> http::Request<()> {
    http::Request::post(format!("http://sockeye/grpc.health.v1.Health/{method}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap_or_default()
}

fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    crate::proxy::grpc::status(headers)
}
