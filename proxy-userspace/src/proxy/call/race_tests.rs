use std::sync::{Arc, Mutex};

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fake {
    Answer(&'static str),
    Failed(&'static str),
}

impl Finish for Fake {
    fn ends_race(&self) -> bool {
        matches!(self, Fake::Answer(_))
    }
}

/// Endpoints that answer (or fail) after a time each, and a log of the tries that
/// were dropped before they finished.
#[derive(Clone, Default)]
struct Backends {
    behaviour: Vec<(&'static str, u64, bool)>,
    dropped: Arc<Mutex<Vec<&'static str>>>,
}

impl Backends {
    fn new(behaviour: &[(&'static str, u64, bool)]) -> Self {
        Self { behaviour: behaviour.to_vec(), ..Self::default() }
    }

    async fn send(&self, endpoint: &'static str) -> Fake {
        let (_, ms, ok) = *self.behaviour.iter().find(|b| b.0 == endpoint).expect("known");
        let mut guard = DropLog(Some(endpoint), self.dropped.clone());
        tokio::time::sleep(Duration::from_millis(ms)).await;
        guard.0 = None;
        if ok { Fake::Answer(endpoint) } else { Fake::Failed(endpoint) }
    }

    fn dropped(&self) -> Vec<&'static str> {
        self.dropped.lock().unwrap().clone()
    }
}

struct DropLog(Option<&'static str>, Arc<Mutex<Vec<&'static str>>>);

impl Drop for DropLog {
    fn drop(&mut self) {
        if let Some(endpoint) = self.0.take() {
            self.1.lock().unwrap().push(endpoint);
        }
    }
}

/// Hedges every `delay_ms` to the endpoints of `order` not tried yet.
fn hedges(
    delay_ms: u64,
    max_tries: usize,
    order: &'static [&'static str],
) -> Option<Hedges<impl FnMut(&[&'static str]) -> Next<&'static str>>> {
    Some(Hedges {
        delay: Duration::from_millis(delay_ms),
        max_tries,
        next: move |tried: &[&'static str]| {
            order.iter().find(|e| !tried.contains(e)).map_or(Next::Stop, |e| Next::Send(*e))
        },
    })
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn a_try_still_unanswered_after_the_delay_is_hedged_and_the_hedge_wins() {
    let backends = Backends::new(&[("slow", 200, true), ("fast", 1, true)]);
    let start = Instant::now();
    let mut tried = vec!["slow"];
    let settled = race("slow", &mut tried, hedges(5, 2, &["fast"]), |e| backends.send(e)).await;
    assert_eq!(settled.outcome, Fake::Answer("fast"));
    assert_eq!(start.elapsed(), ms(6), "the delay, then the hedge's own latency");
    assert!(settled.by_hedge);
    assert_eq!(settled.cancelled, vec![("slow", ms(6))]);
    assert_eq!(backends.dropped(), vec!["slow"], "the slow try was cancelled");
    assert_eq!(tried, vec!["slow", "fast"]);
}

#[tokio::test(start_paused = true)]
async fn an_answer_before_the_delay_sends_no_hedge() {
    let backends = Backends::new(&[("a", 3, true), ("b", 1, true)]);
    let start = Instant::now();
    let mut tried = vec!["a"];
    let never = Some(Hedges {
        delay: ms(5),
        max_tries: 2,
        next: |_: &[&'static str]| -> Next<&'static str> { panic!("no hedge is due") },
    });
    let settled = race("a", &mut tried, never, |e| backends.send(e)).await;
    assert_eq!((settled.outcome, start.elapsed()), (Fake::Answer("a"), ms(3)));
    assert!(!settled.by_hedge && settled.cancelled.is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_first_answer_wins_even_when_the_first_try_gives_it() {
    let backends = Backends::new(&[("a", 7, true), ("b", 10, true)]);
    let start = Instant::now();
    let settled = race("a", &mut vec!["a"], hedges(5, 2, &["b"]), |e| backends.send(e)).await;
    assert_eq!((settled.outcome, start.elapsed()), (Fake::Answer("a"), ms(7)));
    assert!(!settled.by_hedge);
    assert_eq!(settled.cancelled, vec![("b", ms(2))], "the hedge, 2 ms after it was sent");
    assert_eq!(backends.dropped(), vec!["b"]);
}

#[tokio::test(start_paused = true)]
async fn hedges_follow_each_delay_up_to_max_tries() {
    let backends = Backends::new(&[("a", 100, true), ("b", 100, true), ("c", 100, true)]);
    let start = Instant::now();
    let mut tried = vec!["a"];
    let settled = race("a", &mut tried, hedges(5, 3, &["b", "c"]), |e| backends.send(e)).await;
    assert_eq!((settled.outcome, start.elapsed()), (Fake::Answer("a"), ms(100)));
    assert_eq!(tried, vec!["a", "b", "c"], "hedges at 5 and 10 ms, then no more");
    assert_eq!(settled.cancelled, vec![("b", ms(95)), ("c", ms(90))]);

    // No endpoint left (or the budget spent): no more hedges.
    let mut tried = vec!["a"];
    let settled = race("a", &mut tried, hedges(5, 3, &["b"]), |e| backends.send(e)).await;
    assert_eq!(settled.outcome, Fake::Answer("a"));
    assert_eq!(tried, vec!["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_try_leaves_the_call_to_the_others_and_the_last_failure_ends_it() {
    let backends = Backends::new(&[("a", 8, false), ("b", 20, true), ("c", 30, false)]);
    let start = Instant::now();
    let settled = race("a", &mut vec!["a"], hedges(5, 2, &["b"]), |e| backends.send(e)).await;
    assert_eq!((settled.outcome, start.elapsed()), (Fake::Answer("b"), ms(25)));
    assert!(settled.by_hedge && settled.cancelled.is_empty(), "nothing left to cancel");

    let start = Instant::now();
    let settled = race("a", &mut vec!["a"], hedges(5, 2, &["c"]), |e| backends.send(e)).await;
    assert_eq!((settled.outcome, start.elapsed()), (Fake::Failed("c"), ms(35)));

    let start = Instant::now();
    let settled = race("a", &mut vec!["a"], hedges(10, 2, &["b"]), |e| backends.send(e)).await;
    assert_eq!(
        (settled.outcome, start.elapsed()),
        (Fake::Failed("a"), ms(8)),
        "a failure before the delay is the retry loop's to handle"
    );
    assert!(backends.dropped().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_hedge_that_cannot_go_yet_is_asked_for_again() {
    let backends = Backends::new(&[("a", 100, true), ("b", 1, true)]);
    let start = Instant::now();
    let mut asked = 0;
    let not_before_8_ms = Some(Hedges {
        delay: ms(5),
        max_tries: 2,
        next: |_: &[&'static str]| {
            asked += 1;
            if start.elapsed() < ms(8) { Next::Later } else { Next::Send("b") }
        },
    });
    let settled = race("a", &mut vec!["a"], not_before_8_ms, |e| backends.send(e)).await;
    assert_eq!((settled.outcome, start.elapsed()), (Fake::Answer("b"), ms(9)));
    assert_eq!(asked, 4, "at 5, 6, 7 and 8 ms");
}

#[tokio::test(start_paused = true)]
async fn a_hedge_that_fails_is_replaced_at_once() {
    // The first try hangs (a frozen endpoint); the hedge goes to an endpoint that
    // refuses 2 ms later; a third one answers.
    let backends = Backends::new(&[("frozen", 1000, true), ("dead", 2, false), ("ok", 1, true)]);
    let start = Instant::now();
    let mut tried = vec!["frozen"];
    let settled =
        race("frozen", &mut tried, hedges(5, 2, &["dead", "ok"]), |e| backends.send(e)).await;
    assert_eq!((settled.outcome, start.elapsed()), (Fake::Answer("ok"), ms(8)));
    assert_eq!(tried, vec!["frozen", "dead", "ok"], "two tries at once, never three");
    assert_eq!(settled.cancelled, vec![("frozen", ms(8))]);
}
