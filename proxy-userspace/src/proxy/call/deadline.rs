//! How long a try may wait for response headers.
//!
//! The per-try timeout and the call's `timeout.request` count from the moment the
//! client has sent its whole request: a stream that is still sending (client
//! streaming, a bidi session) is not waiting for an answer yet, so only the client's
//! own deadline (`grpc-timeout`, counted from the call's start) bounds it. Once headers
//! arrive, no timer of the agent's applies: a long stream lasts as long as its ends
//! want.

use std::{future::Future, time::Duration};

use tokio::time::{Instant, sleep_until};

use crate::config::Policy;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// The client's deadline (`grpc-timeout` from the call's start), if it gave one.
    pub client: Option<Instant>,
    pub per_try: Duration,
    /// The whole call, retries included, from the end of the request.
    pub request: Duration,
}

impl Deadlines {
    pub fn new(started: Instant, client_timeout: Option<Duration>, policy: &Policy) -> Self {
        Self {
            client: client_timeout.map(|t| started + t),
            per_try: policy.retry.per_try_timeout,
            request: policy.timeout.request,
        }
    }

    /// When a try that started at `try_started` must give up, given that the client
    /// finished sending at `sent`.
    pub fn due(&self, sent: Instant, try_started: Instant) -> Instant {
        let due = (sent.max(try_started) + self.per_try).min(sent + self.request);
        self.client.map_or(due, |client| due.min(client))
    }

    /// Whether no new try may start at `now`: the client's deadline passed, or the
    /// call's, counted from `sent` when the request was sent in full.
    pub fn expired(&self, now: Instant, sent: Option<Instant>) -> bool {
        self.client.is_some_and(|client| now >= client)
            || sent.is_some_and(|sent| now >= sent + self.request)
    }

    /// Resolves when a try that started at `try_started` has waited long enough;
    /// `sent` resolves when the client has sent its whole request.
    pub async fn expire(&self, try_started: Instant, sent: impl Future<Output = Instant>) {
        let answer_due = async {
            let sent = sent.await;
            sleep_until(self.due(sent, try_started)).await;
        };
        match self.client {
            Some(client) => tokio::select! {
                () = sleep_until(client) => {}
                () = answer_due => {}
            },
            None => answer_due.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadlines(client: Option<Duration>) -> Deadlines {
        let mut policy = Policy::default();
        policy.retry.per_try_timeout = Duration::from_secs(2);
        policy.timeout.request = Duration::from_secs(5);
        Deadlines::new(Instant::now(), client, &policy)
    }

    #[tokio::test(start_paused = true)]
    async fn the_per_try_timeout_counts_from_the_end_of_the_request() {
        let d = deadlines(None);
        let start = Instant::now();
        // The client streams for 10 s: no timer runs meanwhile.
        let sent = async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Instant::now()
        };
        d.expire(start, sent).await;
        assert_eq!(start.elapsed(), Duration::from_secs(12));
    }

    #[tokio::test(start_paused = true)]
    async fn the_call_timeout_bounds_retries_after_the_request_was_sent() {
        let d = deadlines(None);
        let sent = Instant::now();
        // A third try starting 4 s after the end of the request gets 1 s, not 2.
        let third = sent + Duration::from_secs(4);
        assert_eq!(d.due(sent, third), sent + Duration::from_secs(5));
        assert!(!d.expired(third, Some(sent)));
        assert!(d.expired(sent + Duration::from_secs(5), Some(sent)));
        assert!(!d.expired(sent + Duration::from_secs(60), None), "still sending");
    }

    #[tokio::test(start_paused = true)]
    async fn the_clients_deadline_counts_from_the_start_even_while_sending() {
        let d = deadlines(Some(Duration::from_millis(1500)));
        let start = Instant::now();
        d.expire(start, std::future::pending()).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
        assert!(d.expired(Instant::now(), None));
        assert_eq!(d.due(start, start), start + Duration::from_millis(1500));
    }
}
