//! `sk-pod grpc-load`: open-loop unary calls at a constant rate over one HTTP/2
//! connection (per target, when calls go to several in turn). Latency is measured from each call's scheduled send time, so a stalled
//! connection shows up in the percentiles instead of silently lowering the rate
//! (no coordinated omission). The report is one JSON line.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::{sync::mpsc, time::Instant};

use tonic::{Code, Status};

use super::{CallRequest, client::EchoClient};

pub struct Options {
    /// Where calls go, in turn (one HTTP/2 connection each).
    pub to: Vec<SocketAddr>,
    pub rate: u32,
    pub duration: Duration,
    pub timeout: Duration,
    pub payload: usize,
    /// Calls allowed in flight; a call scheduled beyond it counts as failed ("overload").
    pub max_in_flight: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LoadReport {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// Failed calls by "Code: message".
    pub errors: BTreeMap<String, u64>,
    /// Successful calls by backend name.
    pub backends: BTreeMap<String, u64>,
    /// Latency of successful calls, in microseconds, from the scheduled send time.
    pub latency_us: Percentiles,
    /// Successful calls that took 100 ms or more.
    #[serde(default)]
    pub over_100ms: u64,
    /// Calls by the second they were scheduled in.
    pub timeline: Vec<Second>,
    /// Calls sent again because the first try never left this client (see
    /// [`never_sent`]): gRPC's transparent retry, which grpc-go and grpc-java do.
    #[serde(default)]
    pub transparent_retries: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Second {
    pub ok: u64,
    pub failed: u64,
    /// The slowest successful call of the second, in microseconds.
    #[serde(default)]
    pub max_us: u64,
}

impl LoadReport {
    /// Reads the report from `grpc-load`'s output (its last non-empty line).
    pub fn parse(output: &str) -> anyhow::Result<Self> {
        crate::last_json_line(output, "load report")
    }
}

struct Tally {
    report: LoadReport,
    histogram: Histogram<u64>,
}

pub async fn run(options: Options) -> anyhow::Result<LoadReport> {
    let clients: Vec<EchoClient> =
        options.to.iter().map(|&to| EchoClient::lazy(to)).collect::<Result<_, _>>()?;
    anyhow::ensure!(!clients.is_empty(), "no target to call");
    let seconds = options.duration.as_secs_f64().ceil() as usize;
    let tally = Arc::new(Mutex::new(Tally {
        report: LoadReport {
            timeline: vec![Second::default(); seconds.max(1)],
            ..Default::default()
        },
        histogram: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    }));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(options.max_in_flight));
    let start = Instant::now();
    let mut schedule = pace(start, options.rate, options.duration);
    let mut tasks = tokio::task::JoinSet::new();
    let payload = vec![0x5a; options.payload];
    let mut next = 0usize;
    while let Some(scheduled) = schedule.recv().await {
        let client = &clients[next % clients.len()];
        next += 1;
        let second = scheduled.duration_since(start).as_secs() as usize;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            record(&tally, second, Err("Overload: too many calls in flight".into()), scheduled);
            continue;
        };
        let (mut client, tally, payload) = (client.clone(), tally.clone(), payload.clone());
        let timeout = options.timeout;
        tasks.spawn(async move {
            let request = || CallRequest { payload: payload.clone(), delay_ms: 0 };
            let mut result = client.call(request(), timeout).await;
            if result.as_ref().is_err_and(never_sent) {
                tally.lock().unwrap().report.transparent_retries += 1;
                result = client.call(request(), timeout).await;
            }
            let result = result
                .map(|r| r.backend)
                .map_err(|s| format!("{:?}: {}", s.code(), short(s.message())));
            record(&tally, second, result, scheduled);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut tally = Arc::into_inner(tally).expect("all calls done").into_inner().unwrap();
    let h = &tally.histogram;
    tally.report.latency_us = Percentiles {
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    };
    Ok(tally.report)
}

/// The send times of a constant rate, each delivered at its time by a pacing thread:
/// the runtime's timer wheel has millisecond ticks, far coarser than the latencies
/// measured here.
fn pace(start: Instant, rate: u32, duration: Duration) -> mpsc::UnboundedReceiver<Instant> {
    let (tx, rx) = mpsc::unbounded_channel();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let start = start.into_std();
    std::thread::spawn(move || {
        for i in 0.. {
            let scheduled = start + interval * i;
            if scheduled.duration_since(start) >= duration {
                break;
            }
            if let Some(wait) = scheduled.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
            if tx.send(Instant::from_std(scheduled)).is_err() {
                break;
            }
        }
    });
    rx
}

fn record(tally: &Mutex<Tally>, second: usize, result: Result<String, String>, scheduled: Instant) {
    let mut tally = tally.lock().unwrap();
    tally.report.sent += 1;
    let slot = second.min(tally.report.timeline.len() - 1);
    match result {
        Ok(backend) => {
            tally.report.ok += 1;
            tally.report.timeline[slot].ok += 1;
            *tally.report.backends.entry(backend).or_default() += 1;
            let micros = scheduled.elapsed().as_micros().clamp(1, 60_000_000) as u64;
            let _ = tally.histogram.record(micros);
            let max = &mut tally.report.timeline[slot].max_us;
            *max = micros.max(*max);
            tally.report.over_100ms += u64::from(micros >= 100_000);
        }
        Err(error) => {
            tally.report.failed += 1;
            tally.report.timeline[slot].failed += 1;
            *tally.report.errors.entry(error).or_default() += 1;
        }
    }
}

/// Whether a failed call never left the client: its connection closed (after GOAWAY)
/// while the call still waited in the client's queue. gRPC clients retry these
/// transparently; tonic does not, so the load client does.
fn never_sent(status: &Status) -> bool {
    status.code() == Code::Cancelled && status.message().contains("operation was canceled")
}

fn short(message: &str) -> &str {
    message.char_indices().nth(80).map_or(message, |(i, _)| &message[..i])
}
