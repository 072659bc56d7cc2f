//! Node-level metrics in the Prometheus text format (`GET /metrics`).
//!
//! Every name starts with `sockeye_`; label sets are per service at most (never per
//! Pod IP or connection), and service names past [`SERVICE_CAP`] share the value
//! `other`. Kernel counters and endpoint states are read at scrape time.

mod collectors;
mod labels;

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{
    config::Protocol,
    datapath::Datapath,
    state::{LocalOriginFailure, State, Transition},
};
pub use labels::OTHER;
use labels::{
    LimitLabel, ProtocolLabel, ResultLabel, ServiceCode, ServiceKind, ServiceLabel, ServiceNames,
    ServiceProtocol, ServiceReason, ServiceState,
};

/// Services with a label value of their own; the rest are counted as `other`.
pub const SERVICE_CAP: usize = 500;

/// Request latency buckets, in seconds: 100 µs to about 6.5 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 17)
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    names: Arc<ServiceNames>,
    requests: Family<ServiceProtocol, Counter>,
    responses: Family<ServiceCode, Counter>,
    retries: Family<ServiceLabel, Counter>,
    budget_exhausted: Family<ServiceLabel, Counter>,
    hedges: Family<ServiceLabel, Counter>,
    hedges_won: Family<ServiceLabel, Counter>,
    hedge_budget_exhausted: Family<ServiceLabel, Counter>,
    connect_errors: Family<ServiceReason, Counter>,
    transitions: Family<ServiceState, Counter>,
    ejections: Family<ServiceLabel, Counter>,
    evictions: Family<ServiceLabel, Counter>,
    connections: Family<ProtocolLabel, Gauge>,
    limit_hits: Family<LimitLabel, Counter>,
    config_updates: Family<ResultLabel, Counter>,
    latency: Family<ServiceLabel, Histogram>,
    tunnels: Family<ServiceKind, Counter>,
    open_tunnels: Family<ServiceLabel, Gauge>,
}

impl Metrics {
    /// Metrics with the kernel's counters and the endpoints' states read at scrape.
    pub fn new(datapath: Arc<dyn Datapath>, state: Arc<State>) -> Arc<Self> {
        let names = Arc::new(ServiceNames::new(SERVICE_CAP));
        let mut registry = Registry::with_prefix("sockeye");
        let metrics = Self {
            requests: Family::default(),
            responses: Family::default(),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            hedges: Family::default(),
            hedges_won: Family::default(),
            hedge_budget_exhausted: Family::default(),
            connect_errors: Family::default(),
            transitions: Family::default(),
            ejections: Family::default(),
            evictions: Family::default(),
            connections: Family::default(),
            limit_hits: Family::default(),
            config_updates: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            tunnels: Family::default(),
            open_tunnels: Family::default(),
            names: names.clone(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "requests",
            "Requests (or opaque connections) per service and protocol",
            metrics.requests.clone(),
        );
        r.register(
            "responses",
            "Responses per service by gRPC status or HTTP status class",
            metrics.responses.clone(),
        );
        r.register("retries", "Tries after the first, per service", metrics.retries.clone());
        r.register(
            "retry_budget_exhausted",
            "Retries refused by the retry budget",
            metrics.budget_exhausted.clone(),
        );
        r.register(
            "hedges",
            "Hedges sent: a call's copy to another endpoint while its try still waited",
            metrics.hedges.clone(),
        );
        r.register(
            "hedges_won",
            "Calls answered by a hedge rather than the try it hedged",
            metrics.hedges_won.clone(),
        );
        r.register(
            "hedge_budget_exhausted",
            "Hedges not sent because hedges and retries already made max_extra_load",
            metrics.hedge_budget_exhausted.clone(),
        );
        r.register(
            "upstream_connect_errors",
            "Failed tries to an endpoint by reason",
            metrics.connect_errors.clone(),
        );
        r.register(
            "endpoint_transitions",
            "Endpoint lifecycle changes by the state entered",
            metrics.transitions.clone(),
        );
        r.register(
            "ejections",
            "Endpoints ejected by outlier detection",
            metrics.ejections.clone(),
        );
        r.register(
            "evictions",
            "Sockets of enrolled Pods connected straight to a gone endpoint, destroyed",
            metrics.evictions.clone(),
        );
        r.register(
            "active_connections",
            "Downstream connections open, by protocol",
            metrics.connections.clone(),
        );
        r.register(
            "connection_limit_hits",
            "Connections refused or sent elsewhere because a connection cap was reached",
            metrics.limit_hits.clone(),
        );
        r.register(
            "config_updates",
            "Desired states from discovery (config file or API), applied or rejected whole",
            metrics.config_updates.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from a request's arrival to its end (gRPC: the trailers; HTTP: the headers)",
            prometheus_client::registry::Unit::Seconds,
            metrics.latency.clone(),
        );
        r.register(
            "tunnels",
            "Calls that became byte tunnels (an Upgrade answered 101, a CONNECT answered 2xx)",
            metrics.tunnels.clone(),
        );
        r.register("open_tunnels", "Tunnels open now, per service", metrics.open_tunnels.clone());
        r.register_collector(Box::new(collectors::KernelCounters(datapath)));
        r.register_collector(Box::new(collectors::EndpointStates { state, names }));
        Arc::new(Self { registry, ..metrics })
    }

    fn service(&self, name: &str) -> Arc<str> {
        self.names.label(name)
    }

    /// The per-call series of `service`, for its balancer to keep.
    pub fn calls(&self, service: &str, protocol: Protocol) -> CallMetrics {
        let service = self.service(service);
        let labels = ServiceProtocol { service: service.clone(), protocol: protocol.name() };
        CallMetrics {
            requests: self.requests.get_or_create(&labels).clone(),
            latency: self.latency.get_or_create(&ServiceLabel { service: service.clone() }).clone(),
            responses: self.responses.clone(),
            service,
        }
    }

    /// Counts one event of a per-service counter.
    fn count(&self, family: &Family<ServiceLabel, Counter>, service: &str) {
        family.get_or_create(&ServiceLabel { service: self.service(service) }).inc();
    }

    pub fn retry(&self, service: &str) {
        self.count(&self.retries, service);
    }

    pub fn retry_budget_exhausted(&self, service: &str) {
        self.count(&self.budget_exhausted, service);
    }

    /// A hedge sent.
    pub fn hedge(&self, service: &str) {
        self.count(&self.hedges, service);
    }

    /// A call a hedge answered.
    pub fn hedge_won(&self, service: &str) {
        self.count(&self.hedges_won, service);
    }

    /// A hedge the shared budget refused.
    pub fn hedge_budget_exhausted(&self, service: &str) {
        self.count(&self.hedge_budget_exhausted, service);
    }

    pub fn upstream_error(&self, service: &str, failure: LocalOriginFailure) {
        let reason = match failure {
            LocalOriginFailure::ConnectRefused => "connect_refused",
            LocalOriginFailure::ConnectTimeout => "connect_timeout",
            LocalOriginFailure::Reset => "reset",
            LocalOriginFailure::Timeout => "timeout",
        };
        self.connect_errors
            .get_or_create(&ServiceReason { service: self.service(service), reason })
            .inc();
    }

    /// Counts a lifecycle change (feed it every [`State::subscribe`] message).
    pub fn transition(&self, transition: &Transition) {
        let service = self.service(&transition.service);
        if transition.to == crate::state::Lifecycle::Ejected {
            self.ejections.get_or_create(&ServiceLabel { service: service.clone() }).inc();
        }
        let labels = ServiceState { service, state: transition.to.name() };
        self.transitions.get_or_create(&labels).inc();
    }

    pub fn evicted(&self, service: &str, sockets: usize) {
        let labels = ServiceLabel { service: self.service(service) };
        self.evictions.get_or_create(&labels).inc_by(sockets as u64);
    }

    /// Counts a connection refused (`global`) or sent elsewhere (`endpoint`) at a cap.
    pub fn limit_hit(&self, limit: &'static str) {
        self.limit_hits.get_or_create(&LimitLabel { limit }).inc();
    }

    /// Counts a desired state applied in full, or rejected (nothing of it applied).
    pub fn config_update(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.config_updates.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a downstream connection as open until the guard drops.
    pub fn connection(&self, protocol: &'static str) -> ConnectionGuard {
        let gauge = self.connections.get_or_create(&ProtocolLabel { protocol }).clone();
        gauge.inc();
        ConnectionGuard(gauge)
    }

    /// Counts a tunnel of `kind` (`upgrade` or `connect`), open until the guard drops.
    pub fn tunnel(&self, service: &str, kind: &'static str) -> ConnectionGuard {
        let service = self.service(service);
        self.tunnels.get_or_create(&ServiceKind { service: service.clone(), kind }).inc();
        let gauge = self.open_tunnels.get_or_create(&ServiceLabel { service }).clone();
        gauge.inc();
        ConnectionGuard(gauge)
    }

    /// The Prometheus text exposition of everything.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(err) = encode(&mut text, &self.registry) {
            tracing::warn!("encoding metrics: {err}");
        }
        text
    }
}

pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One service's per-call series, looked up once when its balancer is made: a call
/// counts itself without hashing labels or taking the families' locks.
#[derive(Debug)]
pub struct CallMetrics {
    service: Arc<str>,
    requests: Counter,
    latency: Histogram,
    responses: Family<ServiceCode, Counter>,
}

impl CallMetrics {
    pub fn request(&self) {
        self.requests.inc();
    }

    /// A response that reached the client, `code` as [`grpc_code_name`] or
    /// [`http_class`] gives it, after `latency`.
    pub fn response(&self, code: &'static str, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
        self.responses.get_or_create(&ServiceCode { service: self.service.clone(), code }).inc();
    }
}

/// The label value of a gRPC status code.
pub fn grpc_code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

/// The label value of an HTTP status: its class.
pub fn http_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests;
