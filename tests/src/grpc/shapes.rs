//! `sk-pod grpc-shape`: one call of one shape (unary, server streaming, client
//! streaming, bidi ping-pong, bidi bulk, a bidi session held open) against
//! `sockeye.test.Echo`, checked end to end: every message back, in order, with its
//! bytes intact. Prints progress lines with `t_ns=` stamps (CLOCK_MONOTONIC) and, last,
//! a JSON [`ShapeReport`].

use std::{net::SocketAddr, time::Duration};

use http::uri::PathAndQuery;
use serde::{Deserialize, Serialize};
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming, client::Grpc, transport::Channel};
use tonic_prost::ProstCodec;

use super::{
    CALL_PATH, CHAT_PATH, CallReply, CallRequest, Chunk, FETCH_PATH, FetchRequest, UPLOAD_PATH,
    UploadReply,
};
use crate::{
    pattern::{Fnv, payload},
    sys::monotonic_ns,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Unary,
    Fetch,
    Upload,
    PingPong,
    Bulk,
    Hold,
}

impl std::str::FromStr for Shape {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "unary" => Shape::Unary,
            "fetch" => Shape::Fetch,
            "upload" => Shape::Upload,
            "pingpong" => Shape::PingPong,
            "bulk" => Shape::Bulk,
            "hold" => Shape::Hold,
            _ => anyhow::bail!("unknown shape {s:?}: unary|fetch|upload|pingpong|bulk|hold"),
        })
    }
}

pub struct Options {
    pub to: SocketAddr,
    pub shape: Shape,
    /// Messages (chunks) in the call; for `hold`, how long to hold it.
    pub count: u64,
    /// Payload bytes per message.
    pub size: usize,
    /// Time between messages: the client's (upload, hold) or the server's (fetch).
    pub pause: Duration,
    /// `fetch`: read at most this many bytes per second (a slow reader).
    pub read_rate: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ShapeReport {
    /// `Ok`, or the gRPC status code the call ended with.
    pub code: String,
    pub message: String,
    /// The backends that answered, in the order they first did.
    pub backends: Vec<String>,
    pub sent: u64,
    pub received: u64,
    /// Every message came back whole and in order.
    pub intact: bool,
    pub elapsed_ms: u64,
    /// When the call ended (CLOCK_MONOTONIC).
    pub ended_ns: u64,
    /// Round trips (ping-pong, hold): median and slowest, in microseconds.
    pub round_trip_p50_us: u64,
    pub round_trip_max_us: u64,
}

impl ShapeReport {
    /// Reads the report from `grpc-shape`'s output (its last non-empty line).
    pub fn parse(output: &str) -> anyhow::Result<Self> {
        crate::last_json_line(output, "shape report")
            .map_err(|e| anyhow::anyhow!("no shape report ({e}) in: {output}"))
    }

    pub fn ok(&self) -> bool {
        self.code == "Ok"
    }

    fn saw(&mut self, backend: &str) {
        if !self.backends.iter().any(|b| b == backend) {
            self.backends.push(backend.to_string());
        }
    }
}

pub async fn run(options: Options) -> anyhow::Result<ShapeReport> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", options.to))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut grpc = Grpc::new(channel);
    grpc.ready().await?;
    let mut report = ShapeReport::default();
    let started = Instant::now();
    let result = match options.shape {
        Shape::Unary => unary(&mut grpc, &options, &mut report).await,
        Shape::Fetch => fetch(&mut grpc, &options, &mut report).await,
        Shape::Upload => upload(&mut grpc, &options, &mut report).await,
        Shape::PingPong | Shape::Hold => pingpong(&mut grpc, &options, &mut report).await,
        Shape::Bulk => bulk(&mut grpc, &options, &mut report).await,
    };
    report.ended_ns = monotonic_ns();
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(intact) => {
            report.code = "Ok".into();
            report.intact = intact;
        }
        Err(status) => {
            report.code = format!("{:?}", status.code());
            report.message = status.message().into();
        }
    }
    Ok(report)
}

fn path(p: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(p)
}

async fn unary(
    grpc: &mut Grpc<Channel>,
    options: &Options,
    report: &mut ShapeReport,
) -> Result<bool, Status> {
    let sent = payload(1, options.size);
    let request = Request::new(CallRequest { payload: sent.clone(), delay_ms: 0 });
    report.sent = 1;
    let reply: CallReply =
        grpc.unary(request, path(CALL_PATH), ProstCodec::default()).await?.into_inner();
    report.received = 1;
    report.saw(&reply.backend);
    Ok(reply.payload == sent)
}

async fn fetch(
    grpc: &mut Grpc<Channel>,
    options: &Options,
    report: &mut ShapeReport,
) -> Result<bool, Status> {
    let request = FetchRequest {
        count: options.count,
        size: options.size as u32,
        interval_ms: options.pause.as_millis() as u32,
    };
    let started = Instant::now();
    let mut chunks: Streaming<Chunk> = grpc
        .server_streaming(Request::new(request), path(FETCH_PATH), ProstCodec::default())
        .await?
        .into_inner();
    let (mut intact, mut bytes) = (true, 0u64);
    while let Some(chunk) = chunks.message().await? {
        if report.received == 0 {
            println!("first chunk from {} t_ns={}", chunk.backend, monotonic_ns());
        }
        intact &= chunk.seq == report.received && chunk.payload.len() == options.size;
        report.saw(&chunk.backend);
        report.received += 1;
        bytes += chunk.payload.len() as u64;
        if report.received.is_multiple_of(100) {
            println!("received {} t_ns={}", report.received, monotonic_ns());
        }
        if let Some(rate) = options.read_rate {
            // A slow reader: no faster than `rate` bytes per second on average.
            let due = started + Duration::from_secs_f64(bytes as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
    }
    Ok(intact && report.received == options.count)
}

async fn upload(
    grpc: &mut Grpc<Channel>,
    options: &Options,
    report: &mut ShapeReport,
) -> Result<bool, Status> {
    let (count, size) = (options.count, options.size);
    let (rx, sender) = send_chunks(1, count, size, options.pause);
    let request = Request::new(ReceiverStream::new(rx));
    let reply = grpc.client_streaming(request, path(UPLOAD_PATH), ProstCodec::default()).await;
    let checksum = sender.await.map_err(|e| Status::internal(e.to_string()))?;
    let reply: UploadReply = reply?.into_inner();
    report.sent = count;
    report.received = reply.count;
    report.saw(&reply.backend);
    Ok(reply.count == count && reply.bytes == count * size as u64 && reply.checksum == checksum.0)
}

/// Sends `count` chunks of `size` bytes, `pause` apart, through a channel of
/// `buffer`; the task ends with their checksum.
fn send_chunks(
    buffer: usize,
    count: u64,
    size: usize,
    pause: Duration,
) -> (mpsc::Receiver<Chunk>, tokio::task::JoinHandle<Fnv>) {
    let (tx, rx) = mpsc::channel(buffer);
    let sender = tokio::spawn(async move {
        let mut checksum = Fnv::default();
        for seq in 0..count {
            if seq > 0 && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let payload = payload(seq, size);
            checksum.add(&payload);
            if tx.send(Chunk { seq, payload, backend: String::new() }).await.is_err() {
                break;
            }
            println!("sent {} t_ns={}", seq + 1, monotonic_ns());
        }
        checksum
    });
    (rx, sender)
}

/// Ping-pong: the next message goes only after the reply to the last came back. As
/// `hold`, one round trip every `pause` for `count` milliseconds.
async fn pingpong(
    grpc: &mut Grpc<Channel>,
    options: &Options,
    report: &mut ShapeReport,
) -> Result<bool, Status> {
    let (tx, rx) = mpsc::channel(1);
    let mut replies: Streaming<Chunk> = grpc
        .streaming(Request::new(ReceiverStream::new(rx)), path(CHAT_PATH), ProstCodec::default())
        .await?
        .into_inner();
    let hold_until = (options.shape == Shape::Hold)
        .then(|| Instant::now() + Duration::from_millis(options.count));
    let mut round_trips = Vec::new();
    let mut intact = true;
    for seq in 0.. {
        match hold_until {
            Some(until) if Instant::now() >= until => break,
            None if seq >= options.count => break,
            _ => {}
        }
        if seq > 0 && options.shape == Shape::Hold {
            tokio::time::sleep(options.pause).await;
        }
        let sent = payload(seq, options.size);
        let at = Instant::now();
        let chunk = Chunk { seq, payload: sent.clone(), backend: String::new() };
        if tx.send(chunk).await.is_err() {
            return Err(Status::internal("the request stream closed"));
        }
        report.sent += 1;
        let reply = replies
            .message()
            .await?
            .ok_or_else(|| Status::unknown("the reply stream ended early"))?;
        round_trips.push(at.elapsed().as_micros() as u64);
        intact &= reply.seq == seq && reply.payload == sent;
        if report.received == 0 {
            println!("first reply from {} t_ns={}", reply.backend, monotonic_ns());
        }
        report.saw(&reply.backend);
        report.received += 1;
    }
    drop(tx);
    if replies.message().await?.is_some() {
        intact = false;
    }
    round_trips.sort_unstable();
    report.round_trip_p50_us = round_trips.get(round_trips.len() / 2).copied().unwrap_or(0);
    report.round_trip_max_us = round_trips.last().copied().unwrap_or(0);
    Ok(intact)
}

/// Bulk: the client sends as fast as flow control lets it while replies stream back.
async fn bulk(
    grpc: &mut Grpc<Channel>,
    options: &Options,
    report: &mut ShapeReport,
) -> Result<bool, Status> {
    let count = options.count;
    let (rx, sender) = send_chunks(8, count, options.size, Duration::ZERO);
    let mut replies: Streaming<Chunk> = grpc
        .streaming(Request::new(ReceiverStream::new(rx)), path(CHAT_PATH), ProstCodec::default())
        .await?
        .into_inner();
    let (mut checksum, mut in_order) = (Fnv::default(), true);
    while let Some(reply) = replies.message().await? {
        in_order &= reply.seq == report.received;
        checksum.add(&reply.payload);
        report.saw(&reply.backend);
        report.received += 1;
    }
    let sent = sender.await.map_err(|e| Status::internal(e.to_string()))?;
    report.sent = count;
    Ok(in_order && report.received == count && checksum == sent)
}
