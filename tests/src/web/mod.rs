//! Plain HTTP for the sandbox: a backend (`sk-pod http-server`) speaking HTTP/1.1 (with
//! WebSocket upgrades) and HTTP/2 with prior knowledge (h2c) on one port, and a client
//! for each request shape (`sk-pod http-shape`).
//!
//! Routes: `GET /` answers 200 (the health check); `POST /upload` reads the body and answers `{"backend","bytes","checksum"}`;
//! `GET /stream?chunks=N&interval_ms=M` streams N lines `chunk I produced_ns=T`, M ms
//! apart; `POST /trailers` echoes the body with trailers `x-checksum` and `x-note`
//! (the request's `x-note` trailer); `GET /ws` is a WebSocket echo; a CONNECT (HTTP/2
//! extended CONNECT included) is answered 200 and its tunnel echoes bytes;
//! `/slow?who=NAME&ms=M` (any method) answers the backend's name, M ms late on the
//! backend named NAME and at once on the others.

pub mod server;
pub mod shapes;

/// The JSON answer of `POST /upload`.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Received {
    pub backend: String,
    pub bytes: u64,
    pub checksum: u64,
}
