//! The gRPC check: `grpc.health.v1.Health`. Watch streams every status change, so a
//! backend turning NOT_SERVING leaves rotation at once; a backend without Watch
//! (UNIMPLEMENTED) is polled with Check. The two messages are small enough to encode
//! by hand: `HealthCheckRequest { string service = 1 }` and
//! `HealthCheckResponse { ServingStatus status = 1 }`.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Results, pause};
use crate::{config::policy::HealthPolicy, state::lifecycle::Check, upstream::h2_client};

const SERVING: u64 = 1;
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
    let (sender, connection) = h2_client().handshake(TokioIo::new(stream)).await.ok()?;
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
    // Watch speaks only on change, so a status that holds is counted again each
    // interval: a backend back to SERVING passes `healthy_threshold` checks in a row.
    let mut last = None;
    let mut ticker = tokio::time::interval(pause(policy));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.reset();
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = ticker.tick() => {
                if last == Some(Check::Pass) && results.send((addr, Check::Pass)).is_err() {
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
            while let Some(status) = next_status(&mut buffer) {
                let check = if status == SERVING { Check::Pass } else { Check::FailNow };
                last = Some(check);
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
        let body = response.into_body().collect().await.ok()?.to_bytes();
        next_status(&mut BytesMut::from(&body[..]))
    };
    match tokio::time::timeout(policy.timeout, call).await {
        Ok(Some(SERVING)) => Check::Pass,
        _ => Check::Fail,
    }
}

fn request(method: &str, service: &str) -> http::Request<Full<Bytes>> {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(&message);
    http::Request::post(format!("http://sockeye/grpc.health.v1.Health/{method}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frame.freeze()))
        .expect("a valid request")
}

/// Takes one complete gRPC message off `buffer` and reads its `status` field.
fn next_status(buffer: &mut BytesMut) -> Option<u64> {
    if buffer.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    if buffer.len() < 5 + len {
        return None;
    }
    buffer.advance(5);
    let mut message = buffer.split_to(len);
    let mut status = 0;
    while message.has_remaining() {
        let key = get_varint(&mut message)?;
        match key & 7 {
            0 => {
                let value = get_varint(&mut message)?;
                if key >> 3 == 1 {
                    status = value;
                }
            }
            2 => {
                let skip = get_varint(&mut message)? as usize;
                message.advance(skip.min(message.remaining()));
            }
            _ => return None,
        }
    }
    Some(status)
}

fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn get_varint(buf: &mut BytesMut) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let byte = buf.get_u8();
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    crate::proxy::grpc::status(headers)
}
