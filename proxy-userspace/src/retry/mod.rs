//! Retries: what may be retried, and the budget that bounds them (and hedges, which
//! share it). The decisions are pure; the loop that makes tries is
//! `proxy::call::tries`.

pub mod budget;

use std::time::Duration;

pub use budget::RetryBudget;

use crate::{
    config::policy::{RetryOn, RetryPolicy},
    state::LocalOriginFailure,
};

/// Why a try failed, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryFailure {
    /// Before any response: connect refused or timed out, reset, no headers in time.
    Local(LocalOriginFailure),
    /// The upstream refused the stream (REFUSED_STREAM or GOAWAY): it never saw it.
    RefusedStream,
    /// A response arrived that may be retried: an HTTP status or a gRPC status.
    Status { http: u16, grpc: Option<u32> },
    /// The try's request body stopped on the agent's side (a newer try took the
    /// client's body over, or the replay copy was outgrown): not the endpoint's doing,
    /// and nothing a retry mends.
    Superseded,
}

impl TryFailure {
    /// Whether `policy` allows another try after this failure.
    pub fn retryable(&self, policy: &RetryPolicy) -> bool {
        use LocalOriginFailure::*;
        match self {
            TryFailure::Local(ConnectRefused | ConnectTimeout) => {
                policy.allows(RetryOn::ConnectFailure)
            }
            TryFailure::Local(Reset) => policy.allows(RetryOn::Reset),
            TryFailure::Local(Timeout) => policy.allows(RetryOn::DeadlineExceeded),
            TryFailure::RefusedStream => policy.allows(RetryOn::RefusedStream),
            TryFailure::Status { grpc: Some(14), .. } => policy.allows(RetryOn::Unavailable),
            TryFailure::Status { grpc: Some(4), .. } => policy.allows(RetryOn::DeadlineExceeded),
            TryFailure::Status { grpc: Some(_), .. } => false,
            TryFailure::Status { http, grpc: None } => {
                (502..=504).contains(http) && policy.allows(RetryOn::GatewayError)
            }
            TryFailure::Superseded => false,
        }
    }
}

/// Why a call gets no further try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoRetry {
    /// The policy does not retry this failure.
    NotRetryable,
    /// A plain HTTP request whose method is not idempotent.
    NotIdempotent,
    /// The request body outgrew the replay copy: the call is committed to its endpoint.
    Outgrown,
}

/// Whether another try may follow `failure`, the budget aside. `idempotent` is true
/// for gRPC calls and idempotent HTTP methods; `replayable` when the replay copy
/// still holds everything the client has sent.
pub fn may_retry(
    failure: &TryFailure,
    policy: &RetryPolicy,
    idempotent: bool,
    replayable: bool,
) -> Result<(), NoRetry> {
    if !failure.retryable(policy) {
        Err(NoRetry::NotRetryable)
    } else if !idempotent {
        Err(NoRetry::NotIdempotent)
    } else if !replayable {
        Err(NoRetry::Outgrown)
    } else {
        Ok(())
    }
}

/// The `grpc-timeout` header (`<digits><unit>`, unit one of H M S m u n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_per_the_spec() {
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("123456789S"), None, "at most 8 digits");
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[test]
    fn the_default_policy_retries_what_the_field_report_lists() {
        let policy = RetryPolicy::default();
        let yes = [
            TryFailure::Local(LocalOriginFailure::ConnectRefused),
            TryFailure::Local(LocalOriginFailure::Reset),
            TryFailure::RefusedStream,
            TryFailure::Status { http: 200, grpc: Some(14) },
            TryFailure::Status { http: 503, grpc: None },
        ];
        let no = [
            TryFailure::Local(LocalOriginFailure::Timeout),
            TryFailure::Status { http: 200, grpc: Some(4) },
            TryFailure::Status { http: 200, grpc: Some(13) },
            TryFailure::Status { http: 500, grpc: None },
            TryFailure::Superseded,
        ];
        assert!(yes.iter().all(|f| f.retryable(&policy)));
        assert!(no.iter().all(|f| !f.retryable(&policy)));
    }

    #[test]
    fn a_retry_needs_a_retryable_failure_a_safe_call_and_the_whole_body() {
        let policy = RetryPolicy::default();
        let reset = TryFailure::Local(LocalOriginFailure::Reset);
        assert_eq!(may_retry(&reset, &policy, true, true), Ok(()));
        assert_eq!(may_retry(&reset, &policy, false, true), Err(NoRetry::NotIdempotent));
        assert_eq!(may_retry(&reset, &policy, true, false), Err(NoRetry::Outgrown));
        let internal = TryFailure::Status { http: 200, grpc: Some(13) };
        assert_eq!(may_retry(&internal, &policy, true, true), Err(NoRetry::NotRetryable));
    }
}
