//! The `timeout` block of a service.

use std::time::Duration;

use serde::Deserialize;

use crate::config::duration;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutPolicy {
    /// How long a Draining endpoint (terminating or removed) keeps its in-flight
    /// requests before it is evicted. Default 10s.
    #[serde(default = "default_drain", deserialize_with = "duration::deserialize")]
    pub drain: Duration,
}

impl Default for TimeoutPolicy {
    fn default() -> Self {
        Self { drain: default_drain() }
    }
}

fn default_drain() -> Duration {
    Duration::from_secs(10)
}
