//! The extra load the agent put on a service's backends: calls it took, and the tries
//! beyond one per call it sent (retries and hedges), read from its `/metrics`.

use serde::Serialize;

use crate::Agent;

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ExtraLoad {
    pub requests: f64,
    pub retries: f64,
    pub hedges: f64,
    /// Calls a hedge answered.
    pub won: f64,
    /// Hedges the shared budget refused.
    pub refused: f64,
}

impl ExtraLoad {
    /// The counters of `service` now (a series not exported yet counts 0).
    pub fn read(agent: &Agent, service: &str) -> anyhow::Result<Self> {
        let (_, text) = agent.admin_get("/metrics")?;
        let sum = |name: &str| -> f64 {
            let label = format!("service=\"{service}\"");
            text.lines()
                .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .fold(0.0, |a, b| a + b)
        };
        Ok(Self {
            requests: sum("sockeye_requests_total"),
            retries: sum("sockeye_retries_total"),
            hedges: sum("sockeye_hedges_total"),
            won: sum("sockeye_hedges_won_total"),
            refused: sum("sockeye_hedge_budget_exhausted_total"),
        })
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            requests: self.requests - earlier.requests,
            retries: self.retries - earlier.retries,
            hedges: self.hedges - earlier.hedges,
            won: self.won - earlier.won,
            refused: self.refused - earlier.refused,
        }
    }

    /// Retries and hedges as a share of the calls.
    pub fn share(&self) -> f64 {
        if self.requests > 0.0 { (self.retries + self.hedges) / self.requests } else { 0.0 }
    }
}
