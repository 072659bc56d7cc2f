//! Per-service policy blocks of the config file, with Envoy-like names and documented
//! defaults: `health`, `outlier`, `retry`, `timeout`, `hedge`. Every block is optional.

mod health;
mod hedge;
mod outlier;
mod retry;
mod timeout;

pub use health::HealthPolicy;
pub use hedge::{HedgePolicy, Percent};
pub use outlier::OutlierPolicy;
pub use retry::{RetryOn, RetryPolicy};
pub use timeout::TimeoutPolicy;

use super::TcpMode;

/// Everything that governs how one service's requests are balanced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub health: HealthPolicy,
    pub outlier: OutlierPolicy,
    pub retry: RetryPolicy,
    pub timeout: TimeoutPolicy,
    pub hedge: HedgePolicy,
    /// Relay or kernel mode, for `tcp` services.
    pub tcp_mode: TcpMode,
}

impl Policy {
    /// Checks values serde cannot: a field path relative to the service and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.health.validate()?;
        self.outlier.validate()?;
        self.retry.validate()?;
        self.timeout.validate()?;
        self.hedge.validate()
    }
}
