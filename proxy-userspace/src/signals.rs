//! What each signal a terminal or a process manager sends does to the agent. Every
//! one is logged; none ends the agent without a clean stop.
//!
//! | signal | effect |
//! |---|---|
//! | SIGTERM, SIGINT | stop: drain (GOAWAY, `Connection: close`), detach, exit 0; a second one ends the drain at once |
//! | SIGQUIT | stop at once: close every connection, detach, exit 0 |
//! | SIGHUP | re-read the config file now (it is also re-read when it changes) |
//! | SIGUSR1 | log a one-line summary of what the agent serves |
//! | SIGUSR2, SIGTSTP, SIGTTIN, SIGTTOU | ignored: a stopped agent would hang its Pods' connects for a second |
//!
//! SIGKILL and SIGSTOP cannot be caught: the kernel fails open at once for the first,
//! within a second for the second. SIGPIPE is ignored by the Rust runtime.

use anyhow::Context as _;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::mpsc,
};
use tracing::info;

/// A request to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM or SIGINT: drain first.
    Graceful,
    /// SIGQUIT: close everything now.
    Now,
}

/// What the agent does for the signals that do not stop it.
pub trait Handler: Send + Sync + 'static {
    /// SIGHUP: re-read the configuration.
    fn reload(&self);
    /// SIGUSR1: a summary of what the agent serves, for the log.
    fn summary(&self) -> String;
}

/// The signals, registered once for the agent's life so that none arriving between
/// two waits is lost.
pub struct Signals {
    term: Signal,
    int: Signal,
    quit: Signal,
    hup: Signal,
    usr1: Signal,
    usr2: Signal,
    tstp: Signal,
    ttin: Signal,
    ttou: Signal,
}

impl Signals {
    pub fn register() -> anyhow::Result<Self> {
        let register = |kind: i32| {
            signal(SignalKind::from_raw(kind)).context("cannot install the signal handlers")
        };
        Ok(Self {
            term: register(libc::SIGTERM)?,
            int: register(libc::SIGINT)?,
            quit: register(libc::SIGQUIT)?,
            hup: register(libc::SIGHUP)?,
            usr1: register(libc::SIGUSR1)?,
            usr2: register(libc::SIGUSR2)?,
            tstp: register(libc::SIGTSTP)?,
            ttin: register(libc::SIGTTIN)?,
            ttou: register(libc::SIGTTOU)?,
        })
    }

    /// Handles every signal from now on with `handler`; stop requests come out of the
    /// returned channel, in order.
    pub fn spawn(mut self, handler: impl Handler) -> mpsc::UnboundedReceiver<Stop> {
        let (stops, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let stop = self.next(&handler).await;
                if stops.send(stop).is_err() {
                    return;
                }
            }
        });
        requests
    }

    /// Waits for the next stop request, handling the other signals meanwhile.
    async fn next(&mut self, handler: &impl Handler) -> Stop {
        let ignored = |name: &str| {
            info!(
                "{name} ignored: a stopped agent would hang its Pods' connects; use SIGTERM to stop it"
            )
        };
        loop {
            tokio::select! {
                _ = self.term.recv() => return stop("SIGTERM", Stop::Graceful),
                _ = self.int.recv() => return stop("SIGINT", Stop::Graceful),
                _ = self.quit.recv() => return stop("SIGQUIT", Stop::Now),
                _ = self.hup.recv() => {
                    info!("SIGHUP: re-reading the configuration");
                    handler.reload();
                }
                _ = self.usr1.recv() => info!("SIGUSR1: {}", handler.summary()),
                _ = self.usr2.recv() => info!("SIGUSR2 ignored: it has no meaning to sockeye"),
                _ = self.tstp.recv() => ignored("SIGTSTP"),
                _ = self.ttin.recv() => ignored("SIGTTIN"),
                _ = self.ttou.recv() => ignored("SIGTTOU"),
            }
        }
    }
}

fn stop(name: &str, stop: Stop) -> Stop {
    info!("{name}: stopping{}", if stop == Stop::Now { " at once" } else { "" });
    stop
}
