//! The admin endpoint: `/healthz` (the process serves), `/readyz` (programs are
//! attached and maps are filled), `/metrics` (Prometheus text) and `/debug/state`
//! (JSON: services, endpoints and their lifecycle states, kernel counters). Read-only;
//! it binds where the config says.

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::{
    net::{TcpListener, TcpStream},
    task::{AbortHandle, JoinSet},
};
use tracing::debug;

use crate::{datapath::Datapath, metrics::Metrics, state::State};

/// Whether the agent is ready to have traffic steered to it.
#[derive(Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the admin endpoint reports on.
pub struct Admin {
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub state: Arc<State>,
    pub datapath: Arc<dyn Datapath>,
}

/// Admin connections at once. At the cap the oldest is closed to make room, so a
/// flood of idle connections neither takes the agent's descriptors nor locks out a
/// health probe.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection is closed when a request's headers do not arrive within this time,
/// idle keep-alive connections included.
const IDLE: Duration = Duration::from_secs(10);
/// No admin connection lives longer than this.
const LIFETIME: Duration = Duration::from_secs(60);

/// Serves the admin endpoint until the task is dropped, which closes its connections.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let mut connections = JoinSet::new();
    let mut oldest_first: VecDeque<AbortHandle> = VecDeque::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    debug!("admin accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next() => continue,
        };
        oldest_first.retain(|c| !c.is_finished());
        if oldest_first.len() >= MAX_CONNECTIONS
            && let Some(oldest) = oldest_first.pop_front()
        {
            oldest.abort();
        }
        oldest_first.push_back(connections.spawn(serve_one(stream, admin.clone())));
    }
}

async fn serve_one(stream: TcpStream, admin: Arc<Admin>) {
    let service = hyper::service::service_fn(move |req| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(admin.respond(&req)) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(LIFETIME, connection).await {
        Ok(Err(err)) => debug!("admin connection: {err}"),
        Ok(Ok(())) => {}
        Err(_) => debug!("admin connection closed after {LIFETIME:?}"),
    }
}

impl Admin {
    fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "the admin endpoint is read-only\n");
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.readiness.get() => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            "/metrics" => body(StatusCode::OK, PROMETHEUS_TEXT, self.metrics.encode()),
            "/debug/state" => body(StatusCode::OK, "application/json", self.debug_state()),
            _ => text(StatusCode::NOT_FOUND, "try /healthz, /readyz, /metrics or /debug/state\n"),
        }
    }

    fn debug_state(&self) -> String {
        let services: Vec<_> = self
            .state
            .services()
            .iter()
            .map(|service| {
                let endpoints: Vec<_> = service
                    .endpoints()
                    .all
                    .iter()
                    .map(|e| {
                        json!({
                            "addr": e.addr,
                            "state": e.lifecycle().name(),
                            "outstanding": e.load.outstanding.load(Ordering::Relaxed),
                        })
                    })
                    .collect();
                json!({
                    "name": &*service.name,
                    "vip": service.vip,
                    "protocol": service.protocol.name(),
                    "endpoints": endpoints,
                })
            })
            .collect();
        let kernel: serde_json::Map<String, serde_json::Value> = match self.datapath.counters() {
            Ok(counters) => {
                counters.into_iter().map(|(c, v)| (c.name().into(), v.into())).collect()
            }
            Err(err) => {
                [("error".to_string(), crate::Chain(&err).to_string().into())].into_iter().collect()
            }
        };
        let maps: serde_json::Map<String, serde_json::Value> = self
            .datapath
            .usage()
            .into_iter()
            .map(|m| (m.map.into(), json!({"entries": m.entries, "capacity": m.capacity})))
            .collect();
        let state = json!({
            "ready": self.readiness.get(),
            "full": self.datapath.full(),
            "services": services,
            "kernel_maps": maps,
            "kernel_counters": kernel,
        });
        serde_json::to_string_pretty(&state).unwrap_or_default()
    }
}

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

fn body(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let content_type = hyper::header::HeaderValue::from_static(content_type);
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, content_type);
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::BodyExt as _;

    use crate::datapath::Recorder;

    fn admin() -> Admin {
        let (datapath, state) = (Arc::new(Recorder::default()), Arc::new(State::default()));
        let metrics = Metrics::new(datapath.clone(), state.clone());
        Admin { readiness: Arc::default(), metrics, state, datapath }
    }

    fn get(admin: &Admin, path: &str) -> (StatusCode, String) {
        let response = admin.respond(&Request::get(path).body(()).unwrap());
        let status = response.status();
        let body = read_body(response.into_body());
        (status, body)
    }

    fn read_body(body: Full<Bytes>) -> String {
        let collected = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(body.collect())
            .unwrap();
        String::from_utf8(collected.to_bytes().to_vec()).unwrap()
    }

    #[test]
    fn readyz_follows_readiness_and_healthz_always_answers() {
        let admin = admin();
        assert_eq!(get(&admin, "/healthz").0, StatusCode::OK);
        assert_eq!(get(&admin, "/readyz").0, StatusCode::SERVICE_UNAVAILABLE);
        admin.readiness.set(true);
        assert_eq!(get(&admin, "/readyz").0, StatusCode::OK);
        assert_eq!(get(&admin, "/nope").0, StatusCode::NOT_FOUND);
        let post = Request::post("/readyz").body(()).unwrap();
        assert_eq!(admin.respond(&post).status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn metrics_and_debug_state_answer() {
        let admin = admin();
        admin.metrics.calls("greeter", crate::config::Protocol::Grpc).request();
        let (status, metrics) = get(&admin, "/metrics");
        assert_eq!(status, StatusCode::OK);
        assert!(
            metrics.contains("sockeye_requests_total{service=\"greeter\",protocol=\"grpc\"} 1")
        );
        let (status, state) = get(&admin, "/debug/state");
        assert_eq!(status, StatusCode::OK);
        let state: serde_json::Value = serde_json::from_str(&state).unwrap();
        assert_eq!(state["services"], json!([]));
        assert_eq!(state["kernel_counters"]["steered"], 0);
    }
}
