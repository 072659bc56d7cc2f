//! sockeye, the node agent: steers enrolled Pods' connections to service VIPs into
//! itself (eBPF), and forwards them to live endpoints.
#![deny(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod balance;
pub mod claim;
pub mod commands;
pub mod config;
pub mod datapath;
pub mod discovery;
pub mod drain;
pub mod enroll;
pub mod eviction;
pub mod handoff;
pub mod health;
pub mod hedge;
pub mod kernel_lb;
pub mod liveness;
pub mod metrics;
pub mod outlier;
pub mod proxy;
pub mod reconcile;
pub mod retry;
pub mod signals;
pub mod state;
mod sync;
mod sys;
pub mod upstream;
pub mod workers;

/// An error and its causes, `outer: inner: innermost`, for log lines (error types
/// say what failed and leave the cause to their `source`).
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}

/// The message a panic carried, for the log line that reports it.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
