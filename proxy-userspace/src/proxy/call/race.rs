//! A race of tries: the first try, then, each time `delay` passes with no answer, a
//! hedge to another endpoint, up to `max_tries` at once. The first try whose outcome
//! ends the race (response headers, not a failure to retry) wins, and the tries
//! still running are dropped: hyper then cancels them (HTTP/2 RST_STREAM CANCEL; an
//! HTTP/1.1 connection is closed, never reused). A try that fails while others still
//! run leaves them to it. Generic over the endpoint and the outcome, so the timing is
//! tested with paused time and no network.

use std::time::Duration;

use futures::{StreamExt as _, stream::FuturesUnordered};
use tokio::time::{Instant, sleep_until};

/// Whether a try's outcome settles the call, or other tries may still answer it.
pub trait Finish {
    fn ends_race(&self) -> bool;
}

/// When hedges are sent, and where.
pub struct Hedges<N> {
    /// How long the first try waits before the first hedge, and each hedge before the
    /// next.
    pub delay: Duration,
    /// Tries at once at most, the first included.
    pub max_tries: usize,
    /// The endpoint of the next hedge given the endpoints tried, or `None` when no
    /// more may be sent (none left, the budget is spent, the call is not ready).
    pub next: N,
}

/// How a race ended.
#[derive(Debug)]
pub struct Settled<T, E> {
    pub outcome: T,
    /// A hedge (not the race's first try) brought the outcome.
    pub by_hedge: bool,
    /// Tries dropped because another ended the race, and how long each had waited.
    pub cancelled: Vec<(E, Duration)>,
}

/// Runs `send(first)`, and hedges by `hedges`, until a try ends the race or every try
/// has failed (the last failure is the outcome). Hedge endpoints are added to `tried`.
pub async fn race<E, T, S, Fut, N>(
    first: E,
    tried: &mut Vec<E>,
    mut hedges: Option<Hedges<N>>,
    send: S,
) -> Settled<T, E>
where
    E: Clone,
    T: Finish,
    S: Fn(E) -> Fut,
    Fut: Future<Output = T>,
    N: FnMut(&[E]) -> Option<E>,
{
    let started = Instant::now();
    // The endpoint and start of each try, until it finishes.
    let mut running = vec![Some((first.clone(), started))];
    let mut racers = FuturesUnordered::new();
    racers.push(numbered(0, send(first)));
    loop {
        let due = hedges
            .as_ref()
            .filter(|h| running.len() < h.max_tries)
            .map(|h| started + h.delay * running.len() as u32);
        tokio::select! {
            biased;
            Some((i, outcome)) = racers.next() => {
                running[i] = None;
                if outcome.ends_race() || racers.is_empty() {
                    let cancelled = running
                        .into_iter()
                        .flatten()
                        .map(|(endpoint, at)| (endpoint, at.elapsed()))
                        .collect();
                    return Settled { outcome, by_hedge: i > 0, cancelled };
                }
            }
            () = sleep_until(due.unwrap_or(started)), if due.is_some() => {
                match hedges.as_mut().and_then(|h| (h.next)(tried)) {
                    Some(endpoint) => {
                        tried.push(endpoint.clone());
                        racers.push(numbered(running.len(), send(endpoint.clone())));
                        running.push(Some((endpoint, Instant::now())));
                    }
                    None => hedges = None,
                }
            }
        }
    }
}

async fn numbered<T>(i: usize, try_: impl Future<Output = T>) -> (usize, T) {
    (i, try_.await)
}

#[cfg(test)]
#[path = "race_tests.rs"]
mod tests;
