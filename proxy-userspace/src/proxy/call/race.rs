//! A race of tries: the first try, then, each time `delay` passes with no answer, a
//! hedge to another endpoint, up to `max_tries` at once (a hedge that cannot go yet is
//! asked for again every [`RECHECK`]). The first try whose outcome ends the race
//! (response headers, not a failure to retry) wins, and the tries still running are
//! dropped: hyper then cancels them (HTTP/2 RST_STREAM CANCEL; an HTTP/1.1 connection
//! is closed, never reused). A try that fails while others still run leaves the call
//! to them, and a hedge takes its place at once. Generic over the endpoint and the
//! outcome, so the timing is tested with paused time and no network.

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
    /// Tries running at once at most, the first included.
    pub max_tries: usize,
    /// What to do when a hedge is due, given the endpoints tried.
    pub next: N,
}

/// The answer of [`Hedges::next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next<E> {
    /// Send a hedge to this endpoint.
    Send(E),
    /// Not yet (the request is not whole yet): ask again after [`RECHECK`].
    Later,
    /// No more hedges in this race (no endpoint left, the budget is spent).
    Stop,
}

/// How soon a hedge that could not be sent yet is asked for again.
pub const RECHECK: Duration = Duration::from_millis(1);

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
    N: FnMut(&[E]) -> Next<E>,
{
    let started = Instant::now();
    // The endpoint and start of each try, until it finishes.
    let mut running = vec![Some((first.clone(), started))];
    let mut racers = FuturesUnordered::new();
    racers.push(numbered(0, send(first)));
    let mut due = hedges.as_ref().map(|h| started + h.delay);
    loop {
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
                // A try failed while others run: a hedge takes its place at once.
                let now = Instant::now();
                if hedges.is_some() && due.is_none_or(|at| at > now) {
                    due = Some(now);
                }
            }
            () = sleep_until(due.unwrap_or(started)), if due.is_some() => {
                let Some(h) = hedges.as_mut() else { due = None; continue };
                if racers.len() >= h.max_tries {
                    // As many tries at once as allowed; a failure reopens a place.
                    due = None;
                    continue;
                }
                due = match (h.next)(tried) {
                    Next::Send(endpoint) => {
                        tried.push(endpoint.clone());
                        racers.push(numbered(running.len(), send(endpoint.clone())));
                        running.push(Some((endpoint, Instant::now())));
                        // The next hedge one more delay on.
                        Some((started + h.delay * running.len() as u32).max(Instant::now()))
                    }
                    Next::Later => Some(Instant::now() + RECHECK),
                    Next::Stop => {
                        hedges = None;
                        None
                    }
                };
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
