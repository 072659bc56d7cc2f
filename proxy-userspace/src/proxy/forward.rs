//! One HTTP request (a gRPC call, or an HTTP/1.1 or HTTP/2 request) through the
//! balancer: pick a Ready endpoint, send on its pooled connection, and on a retryable
//! failure try another endpoint, within the per-try and overall timeouts and the
//! retry budget. Plain HTTP requests are retried only when their method is
//! idempotent; gRPC calls by the gRPC status. A response is passed to the
//! client only once it is known to be final, so no retry ever follows response
//! headers that reached the client.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use http::{Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use super::{
    body::{Ending, ProxyBody, RequestBody, Watched},
    grpc,
};
use crate::{
    balance::{InFlight, pewma},
    retry::{TryFailure, parse_grpc_timeout},
    state::{Endpoint, LocalOriginFailure, Outcome},
    upstream::Balancer,
};

/// The parts of a request each try sends again.
struct Head {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

pub async fn forward(balancer: &Balancer, req: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    let service = &balancer.service;
    let policy = service.policy();
    let grpc = grpc::is_grpc(req.headers());
    let client_deadline =
        req.headers().get("grpc-timeout").and_then(|v| parse_grpc_timeout(v.to_str().ok()?));
    let deadline =
        started + client_deadline.map_or(policy.timeout.request, |d| d.min(policy.timeout.request));
    let (parts, body) = req.into_parts();
    let head = Head {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
    };
    let mut body = match RequestBody::read(body, policy.retry.max_replay_bytes).await {
        Ok(body) => body,
        Err(err) => {
            return failure(grpc, grpc::UNAVAILABLE, &format!("reading the request failed: {err}"));
        }
    };
    balancer.budget.lock().unwrap().request(Instant::now());
    let metrics = &balancer.metrics;
    metrics.request(&service.name, service.protocol);

    let mut tried: Vec<Arc<Endpoint>> = Vec::new();
    let mut last: Option<(TryFailure, Option<Response<Incoming>>)> = None;
    for attempt in 0..policy.retry.attempts {
        if attempt > 0 {
            let Some((failure, _)) = &last else { break };
            let safe = grpc || head.method.is_idempotent();
            if !safe || !body.replayable() || !failure.retryable(&policy.retry) {
                break;
            }
            if !balancer.budget.lock().unwrap().try_retry(Instant::now()) {
                tracing::debug!(service = %service.name, "retry budget spent");
                metrics.retry_budget_exhausted(&service.name);
                break;
            }
            metrics.retry(&service.name);
        }
        // A snapshot taken and released here: nothing borrowed is held across awaits.
        let Some(endpoint) = balancer.select.pick(&service.endpoints(), &tried) else { break };
        tried.push(endpoint.clone());
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            last = Some((TryFailure::Local(LocalOriginFailure::Timeout), None));
            break;
        }
        let Some(try_body) = body.take() else { break };
        let per_try = policy.retry.per_try_timeout.min(remaining);
        match send(balancer, &endpoint, &head, try_body, per_try, grpc, started).await {
            Ok(response) => {
                if !grpc::is_grpc(response.headers()) || grpc::status(response.headers()).is_some()
                {
                    metrics.response(&service.name, code_name(&response, grpc), started.elapsed());
                }
                return response;
            }
            Err(failure) => last = Some(failure),
        }
    }
    let answer = match last {
        Some((_, Some(response))) => response.map(|b| b.map_err(Into::into).boxed_unsync()),
        Some((TryFailure::Local(LocalOriginFailure::Timeout), None)) => failure(
            grpc,
            grpc::DEADLINE_EXCEEDED,
            &format!("no response from {} in time", service.name),
        ),
        Some((failure_kind, None)) => failure(
            grpc,
            grpc::UNAVAILABLE,
            &format!(
                "{} endpoint(s) of {} failed, last with {failure_kind:?}",
                tried.len(),
                service.name
            ),
        ),
        None => failure(
            grpc,
            grpc::UNAVAILABLE,
            &format!("service {} has no ready endpoint", service.name),
        ),
    };
    metrics.response(&service.name, code_name(&answer, grpc), started.elapsed());
    answer
}

/// The metrics label of an answer whose outcome is in its headers.
fn code_name(response: &Response<ProxyBody>, grpc: bool) -> &'static str {
    match grpc::status(response.headers()) {
        Some(code) if grpc => crate::metrics::grpc_code_name(code),
        _ => crate::metrics::http_class(response.status().as_u16()),
    }
}

/// One try on one endpoint. A retryable response comes back as an error, with the
/// response kept in case it is the last word.
async fn send(
    balancer: &Balancer,
    endpoint: &Arc<Endpoint>,
    head: &Head,
    body: ProxyBody,
    timeout: Duration,
    grpc: bool,
    request_started: Instant,
) -> Result<Response<ProxyBody>, (TryFailure, Option<Response<Incoming>>)> {
    let service = &balancer.service;
    let policy = service.policy();
    let started = Instant::now();
    let in_flight = InFlight::new(endpoint.clone());
    let upstream = balancer.upstream(endpoint.addr);
    let attempt = async {
        let connect_timeout = policy.timeout.connect.min(timeout);
        let mut req = Request::new(body);
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = head.uri.clone();
        *req.version_mut() = head.version;
        *req.headers_mut() = head.headers.clone();
        if head.version == http::Version::HTTP_2 {
            let mut sender = upstream.sender(connect_timeout).await.map_err(TryFailure::Local)?;
            sender.ready().await.map_err(|_| TryFailure::Local(LocalOriginFailure::Reset))?;
            return sender.send_request(req).await.map_err(classify);
        }
        let mut sender =
            upstream.http1.take(endpoint.addr, connect_timeout).await.map_err(TryFailure::Local)?;
        sender.ready().await.map_err(|_| TryFailure::Local(LocalOriginFailure::Reset))?;
        let response = sender.send_request(req).await.map_err(classify);
        upstream.http1.give_back(sender);
        response
    };
    let response = tokio::select! {
        result = tokio::time::timeout(timeout, attempt) => {
            result.unwrap_or(Err(TryFailure::Local(LocalOriginFailure::Timeout)))
        }
        // The endpoint went away (drain deadline): give up the try, so it is retried.
        () = upstream.closed() => Err(TryFailure::Local(LocalOriginFailure::Reset)),
    };
    let response = match response {
        Ok(response) => response,
        Err(failure) => {
            if let TryFailure::Local(local) = failure {
                service.report(endpoint, Outcome::LocalOrigin(local));
                balancer.metrics.upstream_error(&service.name, local);
            }
            return Err((failure, None));
        }
    };
    let latency = started.elapsed();
    pewma::observe(&endpoint.load, latency);
    let http_status = response.status().as_u16();
    let header_status = if grpc { grpc::status(response.headers()) } else { None };
    if let Some(code) = header_status.filter(|c| *c != 0) {
        // Trailers-only: the call's outcome is already known.
        service
            .report(endpoint, Outcome::Response { status: grpc::http_equivalent(code), latency });
        let failure = TryFailure::Status { http: http_status, grpc: Some(code) };
        if failure.retryable(&policy.retry) {
            return Err((failure, Some(response)));
        }
    } else if !grpc || http_status != 200 {
        service.report(endpoint, Outcome::Response { status: http_status, latency });
        let failure = TryFailure::Status { http: http_status, grpc: None };
        if failure.retryable(&policy.retry) {
            return Err((failure, Some(response)));
        }
    }
    // The response goes to the client; a gRPC call's outcome comes with its trailers.
    let (service, metrics) = (balancer.service.clone(), balancer.metrics.clone());
    let endpoint = endpoint.clone();
    let watch_trailers = grpc && header_status.is_none() && http_status == 200;
    let done = move |ending: Ending| {
        drop(in_flight);
        let outcome = match ending {
            Ending::Complete { grpc_status } if watch_trailers => {
                let code = grpc_status.unwrap_or(0);
                let name = crate::metrics::grpc_code_name(code);
                metrics.response(&service.name, name, request_started.elapsed());
                Outcome::Response { status: grpc::http_equivalent(code), latency }
            }
            Ending::Failed if watch_trailers => Outcome::LocalOrigin(LocalOriginFailure::Reset),
            _ => return,
        };
        service.report(&endpoint, outcome);
    };
    Ok(response.map(|body| Watched::new(body, done).boxed_unsync()))
}

/// Why hyper failed a request: a refused stream is safe to retry anywhere.
fn classify(err: hyper::Error) -> TryFailure {
    let refused = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .and_then(h2::Error::reason)
        .is_some_and(|r| r == h2::Reason::REFUSED_STREAM);
    if refused { TryFailure::RefusedStream } else { TryFailure::Local(LocalOriginFailure::Reset) }
}

/// The proxy's own error answer: a trailers-only gRPC status, or 502/504 for HTTP.
fn failure(grpc: bool, code: u32, message: &str) -> Response<ProxyBody> {
    if grpc {
        return grpc::error(code, message);
    }
    let status = if code == grpc::DEADLINE_EXCEEDED { 504 } else { 503 };
    let mut response = Response::new(
        http_body_util::Full::new(bytes::Bytes::from(format!("sockeye: {message}\n")))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = http::StatusCode::from_u16(status).expect("a valid status");
    response
}
