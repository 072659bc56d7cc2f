//! The `outlier` block of a service: passive outlier detection with Envoy's names
//! and the defaults of the third field report.

use std::time::Duration;

use serde::Deserialize;

use crate::config::duration;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierPolicy {
    /// Off: no endpoint is ever ejected. Default true.
    pub enabled: bool,
    /// Count local-origin failures (refused, reset, timeout) apart from upstream
    /// errors. Default true.
    pub split_external_local_origin_errors: bool,
    /// Local-origin failures in a row that eject. Default 3; 0 turns it off.
    pub consecutive_local_origin_failure: u32,
    /// Any 5xx (gRPC status mapped to HTTP) in a row that eject. Default 0 (off).
    pub consecutive_5xx: u32,
    /// 502, 503, 504 (gRPC UNAVAILABLE is 503) in a row that eject. Default 5.
    pub consecutive_gateway_failure: u32,
    /// Ejection time, multiplied by how often the endpoint was ejected. Default 15s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub base_ejection_time: Duration,
    /// The cap on one ejection's time. Default 300s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_ejection_time: Duration,
    /// Each interval an endpoint stays in rotation, its ejection multiplier goes down
    /// by one. Default 5s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub interval: Duration,
    /// Never eject more than this share of a service's endpoints (one may always
    /// go). Default 50.
    pub max_ejection_percent: u32,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            split_external_local_origin_errors: true,
            consecutive_local_origin_failure: 3,
            consecutive_5xx: 0,
            consecutive_gateway_failure: 5,
            base_ejection_time: Duration::from_secs(15),
            max_ejection_time: Duration::from_secs(300),
            interval: Duration::from_secs(5),
            max_ejection_percent: 50,
        }
    }
}

impl OutlierPolicy {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let problem = |field: &str, text: &str| Err((format!("outlier.{field}"), text.to_string()));
        if self.base_ejection_time.is_zero() {
            return problem("base_ejection_time", "must be more than 0");
        }
        if self.max_ejection_time < self.base_ejection_time {
            return problem("max_ejection_time", "must not be less than base_ejection_time");
        }
        if self.interval.is_zero() {
            return problem("interval", "must be more than 0");
        }
        if self.max_ejection_percent > 100 {
            return problem("max_ejection_percent", "must be between 0 and 100");
        }
        Ok(())
    }
}
