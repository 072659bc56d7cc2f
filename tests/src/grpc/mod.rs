//! gRPC for the sandbox: a test service (`sockeye.test.Echo`), a backend that serves it
//! beside `grpc.health.v1` and can be steered from its stdin, and an open-loop load
//! client that reports latency percentiles.
//!
//! The messages are declared with prost's derive, so nothing needs `protoc`:
//!
//! ```proto
//! package sockeye.test;
//! service Echo { rpc Call(CallRequest) returns (CallReply); }
//! message CallRequest { bytes payload = 1; uint32 delay_ms = 2; }
//! message CallReply { string backend = 1; bytes payload = 2; string peer = 3; }
//! ```

pub mod backend;
pub mod client;
pub mod load;
mod server;

/// `sockeye.test.Echo/Call`.
pub const CALL_PATH: &str = "/sockeye.test.Echo/Call";

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
