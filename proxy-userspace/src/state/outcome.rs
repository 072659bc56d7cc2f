//! How one request (or connection) to one endpoint went, as the request path reports
//! it to the service's lifecycle owner for outlier detection.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response arrived. `status` is the HTTP status; for gRPC, the grpc-status is
    /// mapped to HTTP the way Envoy does (UNAVAILABLE → 503, …) so outlier detection
    /// treats both alike.
    Response { status: u16, latency: Duration },
    /// The request failed on the way, before any response: a local-origin failure.
    LocalOrigin(LocalOriginFailure),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalOriginFailure {
    /// The connect was refused.
    ConnectRefused,
    /// The connect did not complete in time.
    ConnectTimeout,
    /// The connection or stream was reset, or closed before a response.
    Reset,
    /// No response within the (per-try) timeout.
    Timeout,
}

impl Outcome {
    /// Envoy's gateway errors: 502, 503, 504.
    pub fn is_gateway_error(&self) -> bool {
        matches!(self, Outcome::Response { status: 502..=504, .. })
    }

    pub fn is_5xx(&self) -> bool {
        matches!(self, Outcome::Response { status: 500..=599, .. })
    }

    /// A response that resets every consecutive-failure count.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Response { status: ..=499, .. })
    }
}
