//! The `retry` block of a service. Defaults follow the third field report
//! (`attempts: 3`, `per_try_timeout: 2s`, retry on connect-failure, refused-stream,
//! reset, gateway-error and unavailable).

use std::time::Duration;

use serde::Deserialize;

use crate::config::duration;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Tries in all, the first included, each on a different endpoint. Default 3.
    pub attempts: u32,
    /// How long one try may wait for response headers. Default 2s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub per_try_timeout: Duration,
    /// What a retry is for; see [`RetryOn`]. Default: every condition but
    /// `deadline-exceeded`.
    pub retry_on: Vec<RetryOn>,
    /// Retries allowed as a share of the requests of the last 10 s. Default 20.
    pub budget_percent: u32,
    /// Retries allowed per second whatever the budget says, so a quiet service can
    /// still retry. Default 10.
    pub min_retries_per_second: u32,
    /// Requests whose body is larger than this are sent once, never retried.
    /// Default 65536.
    pub max_replay_bytes: usize,
}

/// The conditions a retry may answer, with Envoy's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The connect was refused or timed out.
    ConnectFailure,
    /// The upstream refused the stream (HTTP/2 REFUSED_STREAM, or GOAWAY before it).
    RefusedStream,
    /// The connection or stream was reset before any response headers.
    Reset,
    /// HTTP 502, 503 or 504.
    GatewayError,
    /// gRPC status 14 (UNAVAILABLE).
    Unavailable,
    /// gRPC status 4 (DEADLINE_EXCEEDED), or the per-try timeout. Off by default:
    /// retrying timeouts on an overloaded service finishes it off.
    DeadlineExceeded,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            per_try_timeout: Duration::from_secs(2),
            retry_on: vec![
                RetryOn::ConnectFailure,
                RetryOn::RefusedStream,
                RetryOn::Reset,
                RetryOn::GatewayError,
                RetryOn::Unavailable,
            ],
            budget_percent: 20,
            min_retries_per_second: 10,
            max_replay_bytes: 64 * 1024,
        }
    }
}

impl RetryPolicy {
    pub fn allows(&self, on: RetryOn) -> bool {
        self.retry_on.contains(&on)
    }

    /// Checks what serde cannot: a field name and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let problem = |field: &str, text: &str| Err((format!("retry.{field}"), text.to_string()));
        if self.attempts == 0 {
            return problem("attempts", "must be at least 1 (the first try counts)");
        }
        if self.per_try_timeout.is_zero() {
            return problem("per_try_timeout", "must be more than 0");
        }
        if self.budget_percent > 100 {
            return problem("budget_percent", "must be between 0 and 100");
        }
        Ok(())
    }
}
