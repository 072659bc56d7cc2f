//! How long a try may wait for response headers.
//!
//! The per-try timeout and the call's `timeout.request` count from the later of the
//! try's (or the call's) start and the last moment the client sent something: a stream
//! that is still sending (client streaming with pauses, a bidi session) is not kept
//! waiting by a timer that ran while it was busy, while a try whose endpoint takes
//! nothing (frozen, or its connection full) times out as a unary call does. The
//! client's own deadline (`grpc-timeout`) counts from the call's start. Once response
//! headers arrive no timer of the agent's applies: a long stream lasts as long as its
//! ends want.

use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use crate::config::Policy;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    pub started: Instant,
    /// The client's deadline (`grpc-timeout` from the call's start), if it gave one.
    pub client: Option<Instant>,
    pub per_try: Duration,
    /// The whole call, retries included.
    pub request: Duration,
}

impl Deadlines {
    pub fn new(started: Instant, client_timeout: Option<Duration>, policy: &Policy) -> Self {
        Self {
            started,
            client: client_timeout.map(|t| started + t),
            per_try: policy.retry.per_try_timeout,
            request: policy.timeout.request,
        }
    }

    /// When a try that started at `try_started` must give up, the client having last
    /// sent something at `progress`.
    pub fn due(&self, progress: Instant, try_started: Instant) -> Instant {
        let try_due = progress.max(try_started) + self.per_try;
        let due = try_due.min(self.call_due(progress));
        self.client.map_or(due, |client| due.min(client))
    }

    /// Whether no new try may start at `now`.
    pub fn expired(&self, now: Instant, progress: Instant) -> bool {
        self.client.is_some_and(|client| now >= client) || now >= self.call_due(progress)
    }

    fn call_due(&self, progress: Instant) -> Instant {
        progress.max(self.started) + self.request
    }

    /// Resolves when a try that started at `try_started` has waited long enough;
    /// `progress` tells when the client last sent something.
    pub async fn expire(&self, try_started: Instant, progress: impl Fn() -> Instant) {
        loop {
            let last = progress();
            sleep_until(self.due(last, try_started)).await;
            // Unless the client sent more meanwhile (the deadline moved on), time is up.
            let client_due = self.client.is_some_and(|client| Instant::now() >= client);
            if client_due || progress() == last {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn deadlines(client: Option<Duration>) -> Deadlines {
        let mut policy = Policy::default();
        policy.retry.per_try_timeout = Duration::from_secs(2);
        policy.timeout.request = Duration::from_secs(5);
        Deadlines::new(Instant::now(), client, &policy)
    }

    #[tokio::test(start_paused = true)]
    async fn a_try_that_gets_nothing_out_times_out_after_the_per_try_timeout() {
        let d = deadlines(None);
        let start = Instant::now();
        d.expire(start, || start).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn each_message_from_the_client_moves_the_per_try_timeout_on() {
        let d = deadlines(None);
        let start = Instant::now();
        // The client sends every 1.5 s for 6 s, then stops.
        let progress = Arc::new(Mutex::new(start));
        let sender = tokio::spawn({
            let progress = progress.clone();
            async move {
                for _ in 0..4 {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    *progress.lock().unwrap() = Instant::now();
                }
            }
        });
        d.expire(start, || *progress.lock().unwrap()).await;
        assert_eq!(start.elapsed(), Duration::from_secs(8), "2 s after the last message");
        sender.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_call_timeout_bounds_retries() {
        let d = deadlines(None);
        let sent = d.started;
        // A third try starting 4 s in gets 1 s, not 2.
        let third = sent + Duration::from_secs(4);
        assert_eq!(d.due(sent, third), sent + Duration::from_secs(5));
        assert!(!d.expired(third, sent));
        assert!(d.expired(sent + Duration::from_secs(5), sent));
        let later = sent + Duration::from_secs(30);
        assert!(!d.expired(sent + Duration::from_secs(31), later), "a stream still sending");
    }

    #[tokio::test(start_paused = true)]
    async fn the_clients_deadline_counts_from_the_start_even_while_sending() {
        let d = deadlines(Some(Duration::from_millis(1500)));
        let start = Instant::now();
        d.expire(start, Instant::now).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
        assert!(d.expired(Instant::now(), Instant::now()));
        assert_eq!(d.due(start, start), start + Duration::from_millis(1500));
    }
}
