//! The `timeout` block of a service.

use std::time::Duration;

use serde::Deserialize;

use crate::config::duration;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutPolicy {
    /// How long one request may take in all, retries included; a shorter
    /// `grpc-timeout` from the client wins. Default 10s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub request: Duration,
    /// How long a connect to an endpoint may take. Default 1s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub connect: Duration,
    /// How long a Draining endpoint (terminating or removed) keeps its in-flight
    /// requests before it is evicted. Default 10s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub drain: Duration,
}

impl Default for TimeoutPolicy {
    fn default() -> Self {
        Self {
            request: Duration::from_secs(10),
            connect: Duration::from_secs(1),
            drain: Duration::from_secs(10),
        }
    }
}

impl TimeoutPolicy {
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (field, value) in [("request", self.request), ("connect", self.connect)] {
            if value.is_zero() {
                return Err((format!("timeout.{field}"), "must be more than 0".into()));
            }
        }
        Ok(())
    }
}
