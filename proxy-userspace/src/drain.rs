//! The end of the agent's connections, in two steps every connection task follows:
//! **draining** (HTTP/2 clients get GOAWAY, HTTP/1.1 ones `Connection: close` after the
//! response in flight; nothing new starts) and, at the drain deadline or a second
//! signal, **closing** (whatever is still open, opaque TCP and tunnels included, is
//! dropped).

use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Serving,
    Draining,
    Closing,
}

/// The agent's side: moves every connection to the next phase.
#[derive(Debug)]
pub struct Drain(watch::Sender<Phase>);

/// A connection's side: learns when to wind down and when to stop.
#[derive(Clone, Debug)]
pub struct DrainWatch(watch::Receiver<Phase>);

impl Drain {
    pub fn new() -> (Self, DrainWatch) {
        let (tx, rx) = watch::channel(Phase::Serving);
        (Self(tx), DrainWatch(rx))
    }

    /// Connections wind down: no new requests, those in flight finish.
    pub fn start(&self) {
        self.0.send_if_modified(|phase| advance(phase, Phase::Draining));
    }

    /// Connections still open are closed now.
    pub fn close(&self) {
        self.0.send_if_modified(|phase| advance(phase, Phase::Closing));
    }
}

fn advance(phase: &mut Phase, to: Phase) -> bool {
    let later = to > *phase;
    if later {
        *phase = to;
    }
    later
}

impl DrainWatch {
    /// A watch that never drains, for tests and tools.
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(Phase::Serving);
        // A dropped sender leaves the phase as it is forever.
        drop(tx);
        Self(rx)
    }

    /// Resolves once the phase is `phase` or later; never, if the agent is gone
    /// without saying so.
    async fn reached(&mut self, phase: Phase) {
        if self.0.wait_for(|now| *now >= phase).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub async fn draining(&mut self) {
        self.reached(Phase::Draining).await;
    }

    pub async fn closing(&mut self) {
        self.reached(Phase::Closing).await;
    }

    /// Runs `work` (a connection with nothing to say when winding down) until it ends
    /// or the connections are closed; `None` means it was cut off.
    pub async fn until_closed<F: Future>(mut self, work: F) -> Option<F::Output> {
        tokio::select! {
            output = work => Some(output),
            () = self.closing() => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn connections_hear_of_draining_then_are_cut_at_closing() {
        let (drain, watch) = Drain::new();
        let mut heard = watch.clone();
        let listener = tokio::spawn(async move { heard.draining().await });
        let connection =
            tokio::spawn(watch.until_closed(tokio::time::sleep(Duration::from_secs(3600))));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!listener.is_finished());
        drain.start();
        listener.await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!connection.is_finished(), "a draining connection runs on until closing");
        drain.close();
        assert_eq!(connection.await.unwrap(), None, "cut off at closing");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_ends_first_keeps_its_output_and_phases_only_advance() {
        let (drain, watch) = Drain::new();
        assert_eq!(watch.clone().until_closed(async { 7 }).await, Some(7));
        drain.close();
        drain.start();
        assert_eq!(*watch.0.borrow(), Phase::Closing, "no way back from closing");
        assert_eq!(DrainWatch::never().until_closed(async { 1 }).await, Some(1));
    }
}
