//! Tries and retries: pick a Ready endpoint not tried yet (selection), send the call
//! to it (a round: the try, raced by hedges when the call is covered, see [`hedge`]),
//! and when it failed in a way the policy retries, the call is safe to repeat, the
//! replay copy still holds all the client sent, the call's deadlines allow and the
//! retry budget has room, try another endpoint. A try that got response headers the
//! policy does not retry ends the loop: from then on the call is committed to that
//! endpoint.

use std::sync::Arc;

use tokio::time::Instant;
use tracing::debug;

use super::{Call, attempt::Answered, hedge, report::Judged};
use crate::{
    config::Policy,
    retry::{TryFailure, may_retry},
    state::{Endpoint, LocalOriginFailure},
    upstream::Balancer,
};

/// Why a call got no answer from any endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failed {
    /// How the last try failed; `None` when no endpoint was Ready.
    pub last: Option<TryFailure>,
    pub tried: usize,
}

/// The answer to pass on: the first one the policy does not retry, or the last
/// retryable one (a 503, a trailers-only UNAVAILABLE) when no retry was left.
pub async fn run(balancer: &Balancer, call: &Call, policy: &Policy) -> Result<Answered, Failed> {
    let (service, metrics) = (&balancer.service, &balancer.metrics);
    let mut tried: Vec<Arc<Endpoint>> = Vec::new();
    let mut last: Option<(TryFailure, Option<Answered>)> = None;
    for _ in 0..policy.retry.attempts {
        if let Some((failure, _)) = &last {
            let replayable = call.body.replayable();
            if let Err(why) = may_retry(failure, &policy.retry, call.idempotent(), replayable) {
                debug!(service = %service.name, ?failure, ?why, "not retried");
                break;
            }
            if call.deadlines.expired(Instant::now(), call.body.progress()) {
                last = Some((TryFailure::Local(LocalOriginFailure::Timeout), None));
                break;
            }
            if !balancer.budget().try_retry(Instant::now().into_std()) {
                debug!(service = %service.name, "retry budget spent");
                metrics.retry_budget_exhausted(&service.name);
                break;
            }
            metrics.retry(&service.name);
        }
        // A snapshot taken and released here: nothing borrowed is held across awaits.
        let Some(endpoint) = balancer.select.pick(&service.endpoints(), &tried) else { break };
        tried.push(endpoint.clone());
        match hedge::round(balancer, call, policy, endpoint, &mut tried).await {
            Judged::Final(answered) => return Ok(answered),
            Judged::ClientFailed(failure) => {
                debug!(service = %service.name, ?failure, "the client's request body failed");
                last = Some((failure, None));
                break;
            }
            Judged::Failed(failure, answered) => last = Some((failure, answered)),
        }
    }
    match last {
        Some((_, Some(answered))) => Ok(answered),
        Some((failure, None)) => Err(Failed { last: Some(failure), tried: tried.len() }),
        None => Err(Failed { last: None, tried: tried.len() }),
    }
}
