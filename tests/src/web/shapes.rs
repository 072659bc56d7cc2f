//! `sk-pod http-shape`: one HTTP exchange of one shape, checked end to end; prints a
//! JSON [`WebReport`] as its last line.
//!
//! - `upload-sized` / `upload-chunked`: POST `--bytes` bytes with a Content-Length, or
//!   chunked; intact when the backend counted the same bytes and checksum.
//! - `stream`: GET a response of `--count` chunks 300 ms apart; records when the first
//!   arrived and when the backend made the last.
//! - `expect`: POST with `Expect: 100-continue`, sending the body only after the
//!   interim 100 response.
//! - `websocket`: `--count` text messages, each echoed before the next is sent.
//! - `h2-connect`: HTTP/2 extended CONNECT (`:protocol echo`) after a GET on the same
//!   connection, then `--count` lines through the tunnel, each echoed.
//! - `h2c-trailers`: HTTP/2 with prior knowledge, a body with trailers, answered with
//!   the body echoed and trailers.
//! - `slow-get` / `slow-post`: `--count` requests one after another on one connection,
//!   `--pause-ms` apart, to `/slow`, which backend `w1` answers [`SLOW_MS`] late;
//!   records the slowest and which backend answered how many.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt as _, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;

use super::Received;
use crate::{
    pattern::{Fnv, fill},
    sys::monotonic_ns,
};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WebReport {
    pub status: u16,
    /// Everything came back whole and as the shape expects.
    pub intact: bool,
    pub backend: String,
    pub bytes: u64,
    /// `stream`: when the first chunk arrived, and when the backend made the last.
    pub first_received_ns: u64,
    pub last_produced_ns: u64,
    /// `expect`: the interim 100 Continue came before the body was sent.
    pub continued: bool,
    pub messages: u64,
    pub elapsed_ms: u64,
    /// `slow-get`, `slow-post`: the slowest request, and requests by backend.
    #[serde(default)]
    pub slowest_ms: u64,
    #[serde(default)]
    pub answered: BTreeMap<String, u64>,
}

/// How late backend `w1` answers `slow-get` and `slow-post`.
pub const SLOW_MS: u64 = 150;

impl WebReport {
    /// Reads the report from `http-shape`'s output (its last non-empty line).
    pub fn parse(output: &str) -> anyhow::Result<Self> {
        crate::last_json_line(output, "web report")
    }
}

pub async fn run(
    to: SocketAddr,
    shape: &str,
    bytes: u64,
    count: u64,
    pause: Duration,
) -> anyhow::Result<WebReport> {
    let started = std::time::Instant::now();
    let mut report = match shape {
        "upload-sized" => upload(to, bytes, true).await?,
        "upload-chunked" => upload(to, bytes, false).await?,
        "stream" => stream(to, count).await?,
        "expect" => expect(to, bytes).await?,
        "websocket" => websocket(to, count).await?,
        "h2c-trailers" => h2c_trailers(to, bytes).await?,
        "h2-connect" => h2_connect(to, count).await?,
        "slow-get" => slow(to, http::Method::GET, count, pause).await?,
        "slow-post" => slow(to, http::Method::POST, count, pause).await?,
        _ => bail!("unknown shape {shape:?}"),
    };
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

async fn connect(to: SocketAddr) -> anyhow::Result<TokioIo<TcpStream>> {
    let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(to))
        .await
        .context("connect timed out")??;
    stream.set_nodelay(true)?;
    Ok(TokioIo::new(stream))
}

/// `bytes` pseudo-random bytes in 64 KiB chunks (data frames, or HTTP/1.1 chunks);
/// returns the body and the checksum it will have.
fn generated(
    bytes: u64,
) -> (StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>>>, u64)
{
    const CHUNK: u64 = 64 * 1024;
    let mut checksum = Fnv::default();
    let mut state = 7;
    let mut chunks = Vec::new();
    let mut left = bytes;
    while left > 0 {
        let mut buf = vec![0u8; CHUNK.min(left) as usize];
        state = fill(state, &mut buf);
        checksum.add(&buf);
        left -= buf.len() as u64;
        chunks.push(Ok(Frame::data(Bytes::from(buf))));
    }
    (StreamBody::new(futures::stream::iter(chunks)), checksum.0)
}

async fn upload(to: SocketAddr, bytes: u64, sized: bool) -> anyhow::Result<WebReport> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(connect(to).await?).await?;
    tokio::spawn(connection);
    let (body, checksum) = generated(bytes);
    let mut request = Request::post("/upload").header("host", "web");
    if sized {
        request = request.header("content-length", bytes);
    }
    let response = sender.send_request(request.body(body)?).await?;
    let status = response.status().as_u16();
    let answer = response.into_body().collect().await?.to_bytes();
    let received: Received = serde_json::from_slice(&answer)
        .with_context(|| format!("{status}: {}", String::from_utf8_lossy(&answer)))?;
    Ok(WebReport {
        status,
        intact: received.bytes == bytes && received.checksum == checksum,
        backend: received.backend,
        bytes: received.bytes,
        ..Default::default()
    })
}

async fn slow(
    to: SocketAddr,
    method: http::Method,
    count: u64,
    pause: Duration,
) -> anyhow::Result<WebReport> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(connect(to).await?).await?;
    tokio::spawn(connection);
    let mut report = WebReport { intact: true, ..Default::default() };
    for _ in 0..count {
        let started = std::time::Instant::now();
        let body = match method {
            http::Method::POST => http_body_util::Full::new(Bytes::from_static(b"order")),
            _ => http_body_util::Full::new(Bytes::new()),
        };
        let request = Request::builder()
            .method(method.clone())
            .uri(format!("/slow?who=w1&ms={SLOW_MS}"))
            .header("host", "web")
            .body(body)?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        report.status = response.status().as_u16();
        let backend = response.into_body().collect().await?.to_bytes();
        report.intact &= report.status == 200;
        report.slowest_ms = report.slowest_ms.max(started.elapsed().as_millis() as u64);
        let backend = String::from_utf8_lossy(&backend).trim().to_string();
        *report.answered.entry(backend).or_default() += 1;
        report.messages += 1;
        tokio::time::sleep(pause).await;
    }
    Ok(report)
}

async fn stream(to: SocketAddr, chunks: u64) -> anyhow::Result<WebReport> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(connect(to).await?).await?;
    tokio::spawn(connection);
    let path = format!("/stream?chunks={chunks}&interval_ms=300");
    let request = Request::get(path).header("host", "web").body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let mut report = WebReport { status: response.status().as_u16(), ..Default::default() };
    let (mut body, mut text) = (response.into_body(), String::new());
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if report.first_received_ns == 0 {
                report.first_received_ns = monotonic_ns();
            }
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    report.messages = lines.len() as u64;
    report.last_produced_ns = lines
        .last()
        .and_then(|l| l.split("produced_ns=").nth(1))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    report.intact = lines.iter().enumerate().all(|(i, l)| l.starts_with(&format!("chunk {i} ")));
    Ok(report)
}

/// Reads from `stream` until a blank line ends a response head.
async fn read_head(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            bail!("closed after {:?}", String::from_utf8_lossy(&head));
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

async fn expect(to: SocketAddr, bytes: u64) -> anyhow::Result<WebReport> {
    let mut stream = connect(to).await?.into_inner();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: {bytes}\r\n\
         Expect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let interim = tokio::time::timeout(Duration::from_secs(5), read_head(&mut stream))
        .await
        .context("no 100 Continue within 5 s")??;
    let continued = interim.starts_with("HTTP/1.1 100");
    let mut body = vec![0u8; bytes as usize];
    fill(7, &mut body);
    let mut checksum = Fnv::default();
    checksum.add(&body);
    stream.write_all(&body).await?;
    let head = read_head(&mut stream).await?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .context("no content-length in the answer")?;
    let mut answer = vec![0u8; length];
    stream.read_exact(&mut answer).await?;
    let received: Received = serde_json::from_slice(&answer)?;
    Ok(WebReport {
        status,
        continued,
        intact: received.bytes == bytes && received.checksum == checksum.0,
        backend: received.backend,
        bytes: received.bytes,
        ..Default::default()
    })
}

async fn websocket(to: SocketAddr, count: u64) -> anyhow::Result<WebReport> {
    let stream = connect(to).await?.into_inner();
    let (mut ws, response) = tokio_tungstenite::client_async("ws://web/ws", stream).await?;
    let mut report =
        WebReport { status: response.status().as_u16(), intact: true, ..Default::default() };
    for i in 0..count {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await?;
        let echoed = ws.next().await.context("the tunnel closed")??;
        report.intact &= echoed.into_text().ok().as_deref() == Some(text.as_str());
        report.messages += 1;
    }
    ws.close(None).await?;
    Ok(report)
}

async fn h2c_trailers(to: SocketAddr, bytes: u64) -> anyhow::Result<WebReport> {
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), connect(to).await?).await?;
    tokio::spawn(connection);
    let mut data = vec![0u8; bytes as usize];
    fill(7, &mut data);
    let mut checksum = Fnv::default();
    checksum.add(&data);
    let mut trailers = HeaderMap::new();
    trailers.insert("x-note", HeaderValue::from_static("from-the-client"));
    let frames = [
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(data.clone()))),
        Ok(Frame::trailers(trailers)),
    ];
    let request = Request::post(format!("http://{to}/trailers"))
        .body(StreamBody::new(futures::stream::iter(frames)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let collected = response.into_body().collect().await?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let echoed = collected.to_bytes();
    let header =
        |name: &str| trailers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    Ok(WebReport {
        status: status.as_u16(),
        intact: status == StatusCode::OK
            && echoed == data
            && header("x-checksum") == checksum.0.to_string()
            && header("x-note") == "from-the-client",
        bytes: echoed.len() as u64,
        ..Default::default()
    })
}

async fn h2_connect(to: SocketAddr, count: u64) -> anyhow::Result<WebReport> {
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), connect(to).await?).await?;
    tokio::spawn(connection);
    // The peer's SETTINGS (which allow extended CONNECT) have come once a GET is answered.
    let get = Request::get(format!("http://{to}/")).body(Empty::<Bytes>::new())?;
    sender.send_request(get).await?.into_body().collect().await?;
    let mut connect = Request::connect(format!("http://{to}/echo")).body(Empty::<Bytes>::new())?;
    connect.extensions_mut().insert(hyper::ext::Protocol::from_static("echo"));
    let mut response = sender.send_request(connect).await?;
    let mut report =
        WebReport { status: response.status().as_u16(), intact: true, ..Default::default() };
    let mut tunnel = TokioIo::new(hyper::upgrade::on(&mut response).await?);
    for i in 0..count {
        let line = format!("message {i}\n");
        tunnel.write_all(line.as_bytes()).await?;
        let mut back = vec![0u8; line.len()];
        tunnel.read_exact(&mut back).await?;
        report.intact &= back == line.as_bytes();
        report.messages += 1;
    }
    Ok(report)
}
