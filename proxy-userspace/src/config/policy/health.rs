//! The `health` block of a service: active checks. gRPC services are checked with
//! `grpc.health.v1` (the streaming Watch where the backend has it, so NOT_SERVING is
//! seen at once; Check polling otherwise), HTTP services with a GET, TCP services
//! with a connect.

use std::time::Duration;

use serde::Deserialize;

use crate::config::duration;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthPolicy {
    /// Off: endpoints are Ready on discovery's word alone. Default true.
    pub enabled: bool,
    /// Time between checks (between reconnects of a Watch). Default 1s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub interval: Duration,
    /// How long one check may take, and the ping period of a Watch's connection (a
    /// ping unanswered by the next fails the check). Default 1s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub timeout: Duration,
    /// Up to this much is added to each interval at random, so checks of many
    /// endpoints spread out. Default 100ms.
    #[serde(deserialize_with = "duration::deserialize")]
    pub interval_jitter: Duration,
    /// Passing checks in a row that bring an Unhealthy endpoint back. Default 2.
    /// A new endpoint needs one.
    pub healthy_threshold: u32,
    /// Failed checks in a row that make a Ready endpoint Unhealthy. Default 2. A
    /// Watch update saying NOT_SERVING counts at once.
    pub unhealthy_threshold: u32,
    /// The service name asked of `grpc.health.v1`. Default "" (the whole server).
    pub grpc_service_name: String,
    /// The path an HTTP check GETs; any 2xx passes. Default "/".
    pub http_path: String,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            interval_jitter: Duration::from_millis(100),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            grpc_service_name: String::new(),
            http_path: "/".into(),
        }
    }
}

impl HealthPolicy {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let problem = |field: &str, text: &str| Err((format!("health.{field}"), text.to_string()));
        if self.interval.is_zero() {
            return problem("interval", "must be more than 0");
        }
        if self.timeout.is_zero() {
            return problem("timeout", "must be more than 0");
        }
        if self.healthy_threshold == 0 {
            return problem("healthy_threshold", "must be at least 1");
        }
        if self.unhealthy_threshold == 0 {
            return problem("unhealthy_threshold", "must be at least 1");
        }
        if !self.http_path.starts_with('/') {
            return problem("http_path", "must start with /");
        }
        Ok(())
    }
}
