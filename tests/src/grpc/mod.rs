//! gRPC for the sandbox: a test service (`sockeye.test.Echo`), a backend that serves it
//! beside `grpc.health.v1` and can be steered from its stdin, an open-loop load
//! client that reports latency percentiles, and a client for every call shape.
//!
//! The messages are declared with prost's derive, so nothing needs `protoc`:
//!
//! ```proto
//! package sockeye.test;
//! service Echo {
//!   rpc Call(CallRequest) returns (CallReply);
//!   rpc Fetch(FetchRequest) returns (stream Chunk);   // server streaming
//!   rpc Upload(stream Chunk) returns (UploadReply);    // client streaming
//!   rpc Chat(stream Chunk) returns (stream Chunk);     // bidi: each chunk echoed
//! }
//! message CallRequest { bytes payload = 1; uint32 delay_ms = 2; }
//! message CallReply { string backend = 1; bytes payload = 2; string peer = 3; }
//! message Chunk { uint64 seq = 1; bytes payload = 2; string backend = 3; }
//! message FetchRequest { uint64 count = 1; uint32 size = 2; uint32 interval_ms = 3; }
//! message UploadReply { string backend = 1; uint64 count = 2; uint64 bytes = 3;
//!                       uint64 checksum = 4; }
//! ```

pub mod backend;
pub mod client;
pub mod load;
mod server;
pub mod shapes;
mod streams;

/// `sockeye.test.Echo/Call`.
pub const CALL_PATH: &str = "/sockeye.test.Echo/Call";
pub const FETCH_PATH: &str = "/sockeye.test.Echo/Fetch";
pub const UPLOAD_PATH: &str = "/sockeye.test.Echo/Upload";
pub const CHAT_PATH: &str = "/sockeye.test.Echo/Chat";

#[derive(Clone, PartialEq, prost::Message)]
pub struct CallRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub payload: Vec<u8>,
    /// The backend waits this long before answering.
    #[prost(uint32, tag = "2")]
    pub delay_ms: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CallReply {
    /// The backend's name.
    #[prost(string, tag = "1")]
    pub backend: String,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
    /// The client address the backend saw.
    #[prost(string, tag = "3")]
    pub peer: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Chunk {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
    /// The backend that sent it (in replies).
    #[prost(string, tag = "3")]
    pub backend: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchRequest {
    #[prost(uint64, tag = "1")]
    pub count: u64,
    /// Payload bytes per chunk.
    #[prost(uint32, tag = "2")]
    pub size: u32,
    /// The backend waits this long between chunks.
    #[prost(uint32, tag = "3")]
    pub interval_ms: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UploadReply {
    #[prost(string, tag = "1")]
    pub backend: String,
    #[prost(uint64, tag = "2")]
    pub count: u64,
    #[prost(uint64, tag = "3")]
    pub bytes: u64,
    /// FNV-1a of every payload, in order.
    #[prost(uint64, tag = "4")]
    pub checksum: u64,
}
