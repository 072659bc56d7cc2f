//! `sk-pod grpc-server`: a gRPC backend with `grpc.health.v1`, scripted the way the
//! field reports describe new Pods (refusing connections, then NOT_SERVING, then
//! SERVING), and steered at run time by lines on its stdin:
//!
//! - `health serving` | `health not_serving`: set the overall health status
//! - `fail <code>` | `fail none`: answer every call with this gRPC status code
//! - `delay <ms>`: wait before answering every call
//! - `slow <percent> <ms>`: wait before answering that share of calls, spread evenly
//!   (with 5: every 20th call); `slow 0 0` stops it
//! - `hang on` | `hang off`: never answer calls (a frozen app that still accepts)
//! - `stats`: print `<name> slowed=<n>`, the calls `slow` delayed, then
//!   `<name> calls=<n>`, the calls it has received
//! - `crash-after <n> <marker>`: exit abruptly on the n-th message of a client stream,
//!   if this backend is the first to create the file `marker` (so of the backends
//!   told, only the first to get that far crashes)
//!
//! It prints `listening`, `serving`, and `first call` lines with `t_ns=` stamps of
//! CLOCK_MONOTONIC, comparable across the sandbox's processes.

use std::{
    net::{Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::io::AsyncBufReadExt as _;
use tokio_stream::StreamExt as _;
use tonic::{Code, Status};
use tonic_health::{ServingStatus, server::HealthReporter};

use super::{CallReply, CallRequest, server::Dispatch};
use crate::sys::monotonic_ns;

pub struct Options {
    pub port: u16,
    pub name: String,
    /// Nothing listens for this long: connects are refused.
    pub refuse_for: Duration,
    /// After listening, health says NOT_SERVING (and calls fail) for this long.
    pub not_serving_for: Duration,
    /// Answer Watch with UNIMPLEMENTED, so checkers must poll Check.
    pub no_watch: bool,
}

#[derive(Default)]
struct Behaviour {
    fail: Option<Code>,
    delay: Duration,
    /// The share of calls, in percent, delayed by the duration.
    slow: (u64, Duration),
    hang: bool,
    crash_after: Option<(u64, std::path::PathBuf)>,
}

pub struct Backend {
    name: String,
    serving: AtomicBool,
    calls: AtomicU64,
    /// Unary calls answered (or being answered), and those `slow` delayed.
    answers: AtomicU64,
    slowed: AtomicU64,
    behaviour: Mutex<Behaviour>,
}

impl Backend {
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Counts a call of any method.
    pub(super) fn count_call(&self) {
        if self.calls.fetch_add(1, Ordering::Relaxed) == 0 {
            println!("{} first call t_ns={}", self.name, monotonic_ns());
        }
    }

    /// Exits abruptly (every connection closes) when told to crash at this message.
    pub(super) fn maybe_crash(&self, messages: u64) {
        let behaviour = self.behaviour.lock().unwrap();
        let Some((after, marker)) = &behaviour.crash_after else { return };
        if messages < *after {
            return;
        }
        if std::fs::OpenOptions::new().write(true).create_new(true).open(marker).is_ok() {
            println!("{} crashing at message {messages} t_ns={}", self.name, monotonic_ns());
            std::process::exit(3);
        }
    }

    pub(super) async fn answer(
        &self,
        req: tonic::Request<CallRequest>,
    ) -> Result<CallReply, Status> {
        let peer = req.remote_addr().map(|a| a.ip().to_canonical().to_string()).unwrap_or_default();
        self.count_call();
        if !self.serving.load(Ordering::Acquire) {
            println!("{} call while not serving t_ns={}", self.name, monotonic_ns());
            return Err(Status::unavailable(format!("{} is not ready", self.name)));
        }
        let (fail, mut delay, hang, (percent, late)) = {
            let b = self.behaviour.lock().unwrap();
            (b.fail, b.delay, b.hang, b.slow)
        };
        if hang {
            std::future::pending::<()>().await;
        }
        // Call n is slow when the share's count goes up at it: evenly spread.
        let n = self.answers.fetch_add(1, Ordering::Relaxed) + 1;
        if n * percent / 100 > (n - 1) * percent / 100 {
            self.slowed.fetch_add(1, Ordering::Relaxed);
            delay += late;
        }
        let request = req.into_inner();
        let delay = delay + Duration::from_millis(u64::from(request.delay_ms));
        // Even a zero sleep waits for the timer's next millisecond tick.
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(code) = fail {
            return Err(Status::new(code, format!("{} fails on purpose", self.name)));
        }
        Ok(CallReply { backend: self.name.clone(), payload: request.payload, peer })
    }
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let backend = Arc::new(Backend {
        name: options.name.clone(),
        serving: AtomicBool::new(options.not_serving_for.is_zero()),
        calls: AtomicU64::new(0),
        answers: AtomicU64::new(0),
        slowed: AtomicU64::new(0),
        behaviour: Mutex::new(Behaviour::default()),
    });
    let (reporter, health) = tonic_health::server::health_reporter();
    if !options.not_serving_for.is_zero() {
        set_health(&reporter, &backend, ServingStatus::NotServing).await;
    }
    tokio::time::sleep(options.refuse_for).await;
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, options.port)))
            .await?;
    println!("{} listening on {} t_ns={}", options.name, listener.local_addr()?, monotonic_ns());
    if !options.not_serving_for.is_zero() {
        let (reporter, backend) = (reporter.clone(), backend.clone());
        tokio::spawn(async move {
            tokio::time::sleep(options.not_serving_for).await;
            set_health(&reporter, &backend, ServingStatus::Serving).await;
        });
    } else {
        println!("{} serving t_ns={}", options.name, monotonic_ns());
    }
    tokio::spawn(control(reporter, backend.clone()));
    let dispatch = Dispatch { backend, health, no_watch: options.no_watch };
    // Small replies must not wait for Nagle's algorithm.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(stream)
    });
    tonic::transport::Server::builder().serve_with_incoming(dispatch, incoming).await?;
    Ok(())
}

async fn set_health(reporter: &HealthReporter, backend: &Backend, status: ServingStatus) {
    let serving = status == ServingStatus::Serving;
    backend.serving.store(serving, Ordering::Release);
    reporter.set_service_status("", status).await;
    let word = if serving { "serving" } else { "not serving" };
    println!("{} {word} t_ns={}", backend.name, monotonic_ns());
}

/// Reads control lines from stdin until it closes.
async fn control(reporter: HealthReporter, backend: Arc<Backend>) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["health", "serving"] => set_health(&reporter, &backend, ServingStatus::Serving).await,
            ["health", "not_serving"] => {
                set_health(&reporter, &backend, ServingStatus::NotServing).await
            }
            ["fail", "none"] => backend.behaviour.lock().unwrap().fail = None,
            ["fail", code] => match code.parse::<i32>() {
                Ok(code) => backend.behaviour.lock().unwrap().fail = Some(Code::from_i32(code)),
                Err(_) => eprintln!("control: bad code {code:?}"),
            },
            ["delay", ms] => match ms.parse() {
                Ok(ms) => backend.behaviour.lock().unwrap().delay = Duration::from_millis(ms),
                Err(_) => eprintln!("control: bad delay {ms:?}"),
            },
            ["slow", percent, ms] => match (percent.parse::<u64>(), ms.parse()) {
                (Ok(percent), Ok(ms)) if percent <= 100 => {
                    backend.behaviour.lock().unwrap().slow = (percent, Duration::from_millis(ms))
                }
                _ => eprintln!("control: bad slow {percent:?} {ms:?}"),
            },
            ["hang", on] => backend.behaviour.lock().unwrap().hang = *on == "on",
            ["crash-after", n, marker] => match n.parse() {
                Ok(n) => backend.behaviour.lock().unwrap().crash_after = Some((n, marker.into())),
                Err(_) => eprintln!("control: bad count {n:?}"),
            },
            ["stats"] => {
                println!("{} slowed={}", backend.name, backend.slowed.load(Ordering::Relaxed));
                println!("{} calls={}", backend.name, backend.calls.load(Ordering::Relaxed))
            }
            _ => eprintln!("control: unknown command {line:?}"),
        }
        println!("{} control {line:?} applied t_ns={}", backend.name, monotonic_ns());
    }
}
