//! One round of the retry loop: a try, and when the service's `hedge` block covers the
//! call (`crate::hedge::covers`), hedges to other Ready endpoints each time the call
//! has waited the hedge delay (the percentile of the service's recent calls, with a
//! floor) without an answer, up to `hedge.max_attempts` tries at once. The first
//! response headers win; the other tries are cancelled.
//!
//! A hedge goes out only when its request is whole (the client's body has ended
//! within the replay copy, or no try has begun to read it), the call's deadlines
//! allow, an endpoint not tried yet is Ready, and the budget it shares with retries
//! has room (`RetryBudget::try_hedge`, counted in `sockeye_hedge_budget_exhausted`).
//!
//! What outlier detection sees: every try that ends (an answer, a failure, a per-try
//! timeout: a try that never answered) is reported as before, hedge or not. A try
//! cancelled because another won is not reported: its outcome is unknown. Its wait
//! feeds selection instead, as a lower bound of its endpoint's latency (it may raise
//! the endpoint's peak-EWMA, never lower it), so a frozen endpoint stops being
//! picked while its calls are being hedged away from it.

use std::sync::Arc;

use tokio::time::Instant;
use tracing::debug;

use super::{
    Call, attempt,
    race::{Hedges, Next, race},
    report::{self, Judged},
};
use crate::{balance::pewma, config::Policy, hedge::covers, state::Endpoint, upstream::Balancer};

/// Sends the call to `first`, hedged when the policy covers it; endpoints hedged to
/// are added to `tried`.
pub async fn round(
    balancer: &Balancer,
    call: &Call,
    policy: &Policy,
    first: Arc<Endpoint>,
    tried: &mut Vec<Arc<Endpoint>>,
) -> Judged {
    let covered = covers(&policy.hedge, &call.target());
    let started = Instant::now();
    let delay = covered.then(|| balancer.latencies().delay(started, &policy.hedge)).flatten();
    if let Some(delay) = delay {
        tracing::trace!(service = %balancer.service.name, ?delay, "hedge delay");
    }
    let hedges = delay.map(|delay| Hedges {
        delay,
        max_tries: policy.hedge.max_attempts as usize,
        next: |tried: &[Arc<Endpoint>]| next_hedge(balancer, call, policy, tried),
    });
    let send = |endpoint: Arc<Endpoint>| async move {
        let result = attempt::send(balancer, call, policy, endpoint.clone()).await;
        report::judge(balancer, call, policy, &endpoint, result)
    };
    let settled = race(first, tried, hedges, send).await;
    for (endpoint, waited) in &settled.cancelled {
        if waited.as_nanos() > u128::from(pewma::estimate_ns(&endpoint.load)) {
            pewma::observe(&endpoint.load, *waited);
        }
    }
    if let Judged::Final(_) = &settled.outcome {
        if covered {
            balancer.latencies().record(Instant::now(), started.elapsed());
        }
        if settled.by_hedge {
            balancer.metrics.hedge_won(&balancer.service.name);
        }
    }
    settled.outcome
}

/// Whether, and where, a hedge due now goes.
fn next_hedge(
    balancer: &Balancer,
    call: &Call,
    policy: &Policy,
    tried: &[Arc<Endpoint>],
) -> Next<Arc<Endpoint>> {
    let (service, now) = (&balancer.service, Instant::now());
    if call.deadlines.expired(now, call.body.progress()) {
        return Next::Stop;
    }
    if !call.body.may_hedge() {
        return if call.body.replayable() { Next::Later } else { Next::Stop };
    }
    let Some(endpoint) = balancer.select.pick(&service.endpoints(), tried) else {
        return Next::Stop;
    };
    if !balancer.budget().try_hedge(now.into_std(), policy.hedge.max_extra_load) {
        debug!(service = %service.name, "hedge budget spent");
        balancer.metrics.hedge_budget_exhausted(&service.name);
        return Next::Stop;
    }
    balancer.metrics.hedge(&service.name);
    debug!(service = %service.name, endpoint = %endpoint.addr, tried = tried.len(), "hedge sent");
    Next::Send(endpoint)
}
