//! `sk-pod http-server`: the HTTP backend (see the module's routes).

use std::{
    convert::Infallible,
    net::{Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{body::Frame, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role};

use super::Received;
use crate::{pattern::Fnv, sys::monotonic_ns};

type Body = BoxBody<Bytes, Infallible>;

pub async fn run(port: u16, name: String) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).await?;
    println!("{name} listening on {}", listener.local_addr()?);
    let name: Arc<str> = name.into();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| route(name.clone(), req));
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http2().enable_connect_protocol();
            let served =
                builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
            if let Err(err) = served {
                eprintln!("connection: {err}");
            }
        });
    }
}

async fn route(name: Arc<str>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.method() == http::Method::CONNECT {
        return Ok(connect_echo(req));
    }
    let response = match req.uri().path() {
        "/upload" => upload(&name, req).await,
        "/stream" => stream(req.uri().query().unwrap_or("")),
        "/trailers" => trailers(req).await,
        "/ws" => websocket(req),
        "/slow" => slow(&name, req).await,
        "/" => text(StatusCode::OK, "ok\n".into()),
        _ => text(StatusCode::NOT_FOUND, "no such route\n".into()),
    };
    Ok(response)
}

/// Answers the backend's name after reading the body: `ms` late if it is `who`.
async fn slow(name: &str, req: Request<Incoming>) -> Response<Body> {
    let query = req.uri().query().unwrap_or("").to_string();
    let param = |key: &str| {
        query.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')).unwrap_or("")
    };
    let late = param("who") == name;
    let ms: u64 = param("ms").parse().unwrap_or(0);
    let _ = req.into_body().collect().await;
    if late {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    text(StatusCode::OK, format!("{name}\n"))
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response
}

/// Reads the body as it comes (a client waiting for 100 Continue gets it here).
async fn upload(name: &str, req: Request<Incoming>) -> Response<Body> {
    let (mut bytes, mut checksum, mut body) = (0, Fnv::default(), req.into_body());
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes += data.len() as u64;
                    checksum.add(data);
                }
            }
            Err(err) => return text(StatusCode::BAD_REQUEST, format!("body: {err}\n")),
        }
    }
    let received = Received { backend: name.into(), bytes, checksum: checksum.0 };
    text(StatusCode::OK, serde_json::to_string(&received).unwrap_or_default())
}

/// `chunks` lines, `interval_ms` apart, each made only when its time comes.
fn stream(query: &str) -> Response<Body> {
    let param = |key: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (chunks, interval) = (param("chunks"), Duration::from_millis(param("interval_ms")));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        for i in 0..chunks {
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            let line = format!("chunk {i} produced_ns={}\n", monotonic_ns());
            if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                return;
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::new(BodyExt::boxed(body))
}

/// Echoes the body, then trailers: its checksum and the request's `x-note` trailer.
async fn trailers(req: Request<Incoming>) -> Response<Body> {
    let collected = match req.into_body().collect().await {
        Ok(collected) => collected,
        Err(err) => return text(StatusCode::BAD_REQUEST, format!("body: {err}\n")),
    };
    let note = collected.trailers().and_then(|t| t.get("x-note")).cloned();
    let data = collected.to_bytes();
    let mut checksum = Fnv::default();
    checksum.add(&data);
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from(checksum.0));
    trailers.insert("x-note", note.unwrap_or(HeaderValue::from_static("none")));
    let frames = [Ok(Frame::data(data)), Ok(Frame::trailers(trailers))];
    Response::new(BodyExt::boxed(StreamBody::new(tokio_stream::iter(frames))))
}

/// Accepts a CONNECT (HTTP/2 extended CONNECT too) and echoes the tunnel's bytes.
fn connect_echo(mut req: Request<Incoming>) -> Response<Body> {
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let (mut from, mut to) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut from, &mut to).await;
            }
            Err(err) => eprintln!("CONNECT upgrade: {err}"),
        }
    });
    text(StatusCode::OK, String::new())
}

/// Answers the WebSocket handshake with 101, then echoes every message.
fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "not a WebSocket handshake\n".into());
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => return eprintln!("websocket upgrade: {err}"),
        };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        let (mut sink, mut messages) = ws.split();
        while let Some(Ok(message)) = messages.next().await {
            if message.is_close() {
                break;
            }
            if (message.is_text() || message.is_binary()) && sink.send(message).await.is_err() {
                break;
            }
        }
    });
    let accept = derive_accept_key(key.as_bytes());
    let mut response = text(StatusCode::SWITCHING_PROTOCOLS, String::new());
    let headers = response.headers_mut();
    headers.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert("sec-websocket-accept", accept);
    }
    response
}
