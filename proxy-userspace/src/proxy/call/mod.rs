//! One HTTP call (a gRPC call, an HTTP/1.1 or HTTP/2 request) through the balancer, as
//! a stack of parts with one job each:
//!
//! - [`replay`]: the request body, streamed to each try as it arrives, with a copy
//!   bounded by `retry.max_replay_bytes` kept for retries;
//! - [`deadline`]: how long a try may wait for response headers;
//! - [`tries`]: selection (`balance::Select`) and the retry loop under the policy and
//!   the retry budget;
//! - [`hedge`]: each round of the loop as a [`race`] of its try and, when the call is
//!   covered and slower than most, hedges to other endpoints (`crate::hedge`);
//! - [`attempt`]: one try on one endpoint's pooled connection (`upstream`);
//! - [`report`]: each try's outcome to outlier detection and the metrics, and the
//!   response body streamed back, reporting a gRPC call's status at its trailers;
//! - [`tunnel`]: upgrades and CONNECT, which become byte tunnels.
//!
//! Nothing of the response reaches the client before the loop has settled on a try,
//! so a retry never follows response headers the client has seen.

mod attempt;
mod deadline;
mod hedge;
mod race;
mod replay;
mod report;
mod tries;
mod tunnel;

use http::{Method, Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::time::Instant;

use self::{
    attempt::Answered,
    deadline::Deadlines,
    replay::ReplayBody,
    report::{ResponseBody, Settle, Verdict},
    tries::Failed,
};
use super::{
    body::{ProxyBody, empty},
    grpc,
};
use crate::{
    config::Policy,
    retry::{TryFailure, parse_grpc_timeout},
    state::LocalOriginFailure,
    upstream::{Balancer, is_upgrade},
};

/// What each try sends again besides the body.
struct Head {
    method: Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    /// The `:protocol` pseudo-header of an HTTP/2 extended CONNECT.
    connect_protocol: Option<hyper::ext::Protocol>,
}

/// A call on its way: what the client asked, and the deadlines it runs under.
pub struct Call {
    head: Head,
    grpc: bool,
    body: ReplayBody<Incoming>,
    started: Instant,
    deadlines: Deadlines,
    /// An Upgrade or CONNECT: the answer may become a tunnel.
    tunnel: bool,
}

impl Call {
    fn new(req: Request<Incoming>, policy: &Policy, started: Instant, tunnel: bool) -> Self {
        let grpc = grpc::is_grpc(req.headers());
        let client_timeout =
            req.headers().get("grpc-timeout").and_then(|v| parse_grpc_timeout(v.to_str().ok()?));
        let (mut parts, body) = req.into_parts();
        let head = Head {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            connect_protocol: parts.extensions.remove(),
        };
        Self {
            head,
            grpc,
            body: ReplayBody::new(body, policy.retry.max_replay_bytes),
            started,
            deadlines: Deadlines::new(started, client_timeout, policy),
            tunnel,
        }
    }

    /// gRPC calls, and HTTP requests whose method is idempotent, may be sent twice.
    fn idempotent(&self) -> bool {
        self.grpc || self.head.method.is_idempotent()
    }

    /// What hedging decides on.
    fn target(&self) -> crate::hedge::Target<'_> {
        crate::hedge::Target {
            grpc: self.grpc,
            method: &self.head.method,
            path: self.head.uri.path(),
            tunnel: self.tunnel,
        }
    }

    /// The request of the next try, and its body's generation (see
    /// [`ReplayBody::spoiled`]).
    fn request(&self) -> (Request<ProxyBody>, u64) {
        let body = self.body.next_try();
        let generation = body.generation();
        let mut req = Request::new(body.map_err(Into::into).boxed_unsync());
        *req.method_mut() = self.head.method.clone();
        *req.uri_mut() = self.head.uri.clone();
        *req.version_mut() = self.head.version;
        *req.headers_mut() = self.head.headers.clone();
        if let Some(protocol) = &self.head.connect_protocol {
            req.extensions_mut().insert(protocol.clone());
        }
        (req, generation)
    }
}

/// Serves one request: the entry point of the HTTP/1.1 and HTTP/2 servers.
pub async fn handle(balancer: &Balancer, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    let service = &balancer.service;
    let policy = service.policy();
    let client_end = tunnel::wanted(&req).then(|| hyper::upgrade::on(&mut req));
    let call = Call::new(req, &policy, started, client_end.is_some());
    balancer.budget().request(started.into_std());
    balancer.calls.request();
    match tries::run(balancer, &call, &policy).await {
        Ok(answered) => {
            call.body.commit();
            pass_on(balancer, &call, answered, client_end)
        }
        Err(failed) => {
            let answer = fail(&call, &service.name, failed);
            let code = report::code_name(&answer, call.grpc);
            balancer.calls.response(code, started.elapsed());
            answer
        }
    }
}

/// The answer of the try the call settled on, its body streamed through (or the
/// connection turned into a tunnel).
fn pass_on(
    balancer: &Balancer,
    call: &Call,
    answered: Answered,
    client_end: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ProxyBody> {
    let Answered { mut response, endpoint, upstream, in_flight, latency } = answered;
    let (service, metrics) = (&balancer.service, &balancer.metrics);
    let at_trailers = report::verdict(call.grpc, &response) == Verdict::AtTrailers;
    if !at_trailers {
        balancer.calls.response(report::code_name(&response, call.grpc), call.started.elapsed());
    }
    if let Some(client) = client_end.filter(|_| is_upgrade(&call.head.method, response.status())) {
        let ends = tunnel::Ends { client, endpoint: hyper::upgrade::on(&mut response) };
        let connect = call.head.method == Method::CONNECT;
        tunnel::open(ends, upstream, in_flight, metrics, &service.name, connect);
        return response.map(|_| empty());
    }
    let settle = Settle {
        service: service.clone(),
        calls: balancer.calls.clone(),
        endpoint,
        upstream,
        in_flight,
        latency,
        call_started: call.started,
        at_trailers,
    };
    response.map(|body| ResponseBody::new(body, settle).boxed_unsync())
}

/// The proxy's own answer when no endpoint answered: a trailers-only gRPC status, or
/// 503/504 for HTTP.
fn fail(call: &Call, service: &str, failed: Failed) -> Response<ProxyBody> {
    let (code, message) = match failed.last {
        Some(TryFailure::Local(LocalOriginFailure::Timeout)) => {
            (grpc::DEADLINE_EXCEEDED, format!("no response from {service} in time"))
        }
        Some(failure) => (
            grpc::UNAVAILABLE,
            format!("{} endpoint(s) of {service} failed, last with {failure:?}", failed.tried),
        ),
        None => (grpc::UNAVAILABLE, format!("service {service} has no ready endpoint")),
    };
    if call.grpc {
        return grpc::error(code, &message);
    }
    let status = if code == grpc::DEADLINE_EXCEEDED {
        http::StatusCode::GATEWAY_TIMEOUT
    } else {
        http::StatusCode::SERVICE_UNAVAILABLE
    };
    let body = http_body_util::Full::new(bytes::Bytes::from(format!("sockeye: {message}\n")));
    let mut response = Response::new(body.map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response
}
