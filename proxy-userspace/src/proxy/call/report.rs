//! Outcome reporting: how a try went, told to the service's lifecycle owner (for
//! outlier detection) and to the metrics. A response's outcome is in its headers (an
//! HTTP status, a trailers-only gRPC status) or, for a gRPC call, in the trailers at
//! the end of its body: [`ResponseBody`] passes the body through untouched and reports
//! when it ends. A gRPC response whose endpoint fails or is drained mid-body ends with
//! UNAVAILABLE trailers, so the client sees a retriable status, never a hang or a
//! bare reset.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{Call, attempt::Answered, race::Finish};
use crate::{
    balance::InFlight,
    config::Policy,
    metrics::{CallMetrics, grpc_code_name, http_class},
    proxy::{body::BoxError, grpc},
    retry::TryFailure,
    state::{Endpoint, LocalOriginFailure, Outcome, Service},
    upstream::{Balancer, Upstream},
};

/// What a response's headers say of its try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The outcome is known now: `status` for outlier detection (a gRPC status mapped
    /// to HTTP), and the status as a retry would see it.
    Known { status: u16, answer: TryFailure },
    /// A gRPC call whose status comes with its trailers.
    AtTrailers,
}

pub fn verdict<B>(grpc: bool, response: &Response<B>) -> Verdict {
    let http = response.status().as_u16();
    let code = if grpc { grpc::status(response.headers()) } else { None };
    match code {
        Some(code) => Verdict::Known {
            status: grpc::http_equivalent(code),
            answer: TryFailure::Status { http, grpc: Some(code) },
        },
        None if grpc && http == 200 => Verdict::AtTrailers,
        None => Verdict::Known { status: http, answer: TryFailure::Status { http, grpc: None } },
    }
}

/// The metrics label of an answer whose outcome is in its headers.
pub fn code_name<B>(response: &Response<B>, grpc: bool) -> &'static str {
    match grpc::status(response.headers()) {
        Some(code) if grpc => grpc_code_name(code),
        _ => http_class(response.status().as_u16()),
    }
}

/// How a response body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEnd {
    /// Its end arrived; `grpc_status` from the trailers, when there were any.
    Complete { grpc_status: Option<u32> },
    /// The upstream failed (or was closed) mid-body.
    Failed,
    /// The client went away first.
    Abandoned,
}

/// What is left to do when a response ends: the request stops counting as in flight
/// (a drain waits for it), and a gRPC call's outcome is reported.
pub struct Settle {
    pub service: Arc<Service>,
    pub calls: Arc<CallMetrics>,
    pub endpoint: Arc<Endpoint>,
    pub upstream: Arc<Upstream>,
    pub in_flight: InFlight,
    /// Time to response headers.
    pub latency: Duration,
    pub call_started: Instant,
    /// A gRPC call whose outcome comes with its trailers.
    pub at_trailers: bool,
}

impl Settle {
    fn done(self, end: BodyEnd) {
        let Self {
            service, calls, endpoint, in_flight, latency, call_started, at_trailers, ..
        } = self;
        drop(in_flight);
        if !at_trailers {
            return;
        }
        let (code, outcome) = match end {
            BodyEnd::Complete { grpc_status } => {
                let code = grpc_status.unwrap_or(0);
                (code, Outcome::Response { status: grpc::http_equivalent(code), latency })
            }
            BodyEnd::Failed => (grpc::UNAVAILABLE, Outcome::LocalOrigin(LocalOriginFailure::Reset)),
            BodyEnd::Abandoned => return,
        };
        calls.response(grpc_code_name(code), call_started.elapsed());
        service.report(&endpoint, outcome);
    }

    /// Why the stream ended early, for the client.
    fn failure_message(&self) -> String {
        let (addr, name) = (self.endpoint.addr, &self.service.name);
        if self.upstream.is_closed() {
            format!("endpoint {addr} of {name} went away (drained or removed) mid-stream")
        } else {
            format!("the connection to endpoint {addr} of {name} failed mid-stream")
        }
    }
}

/// A response body on its way to the client.
pub struct ResponseBody<B = Incoming> {
    inner: B,
    settle: Option<Settle>,
    /// UNAVAILABLE trailers were sent in place of an upstream failure: nothing follows.
    ended: bool,
}

impl<B> ResponseBody<B> {
    pub fn new(inner: B, settle: Settle) -> Self {
        Self { inner, settle: Some(settle), ended: false }
    }

    fn finish(&mut self, end: BodyEnd) {
        if let Some(settle) = self.settle.take() {
            settle.done(end);
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError> + std::fmt::Display,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let grpc_status = grpc::status(trailers);
                    self.finish(BodyEnd::Complete { grpc_status });
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                let grpc = self.settle.as_ref().is_some_and(|s| s.at_trailers);
                if !grpc {
                    self.finish(BodyEnd::Failed);
                    return Poll::Ready(Some(Err(err.into())));
                }
                let message = self.settle.as_ref().map(Settle::failure_message);
                tracing::debug!("{}: {err}", message.as_deref().unwrap_or("mid-stream failure"));
                let trailers = unavailable(message.as_deref().unwrap_or("the upstream failed"));
                self.finish(BodyEnd::Failed);
                self.ended = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Poll::Ready(None) => {
                self.finish(BodyEnd::Complete { grpc_status: None });
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for ResponseBody<B> {
    fn drop(&mut self) {
        self.finish(BodyEnd::Abandoned);
    }
}

/// Trailers that end a gRPC call with UNAVAILABLE (retriable) and `message`.
fn unavailable(message: &str) -> HeaderMap {
    grpc::status_headers(grpc::UNAVAILABLE, message)
}

/// A try's outcome, reported, as the retry loop and a race see it.
pub enum Judged {
    /// Response headers the policy does not retry: the call is committed to them.
    Final(Answered),
    /// A failure, or an answer the policy may retry (kept, to pass on when no retry
    /// follows).
    Failed(TryFailure, Option<Answered>),
    /// The client's own request body failed: no endpoint is to blame, nothing follows.
    ClientFailed(TryFailure),
}

impl Finish for Judged {
    fn ends_race(&self) -> bool {
        !matches!(self, Judged::Failed(..))
    }
}

/// Reports how a try on `endpoint` went and says what it means for the call.
pub fn judge(
    balancer: &Balancer,
    call: &Call,
    policy: &Policy,
    endpoint: &Arc<Endpoint>,
    result: Result<Answered, TryFailure>,
) -> Judged {
    let answered = match result {
        Err(failure) if call.body.client_failed() => return Judged::ClientFailed(failure),
        Err(failure) => {
            try_failed(balancer, endpoint, failure);
            return Judged::Failed(failure, None);
        }
        Ok(answered) => answered,
    };
    match verdict(call.grpc, &answered.response) {
        Verdict::AtTrailers => Judged::Final(answered),
        Verdict::Known { status, answer } => {
            balancer
                .service
                .report(endpoint, Outcome::Response { status, latency: answered.latency });
            if answer.retryable(&policy.retry) {
                Judged::Failed(answer, Some(answered))
            } else {
                Judged::Final(answered)
            }
        }
    }
}

/// Reports a try that got no response headers: a local-origin failure counts
/// against the endpoint; a refused stream does not (the endpoint never saw it).
pub fn try_failed(balancer: &Balancer, endpoint: &Arc<Endpoint>, failure: TryFailure) {
    if let TryFailure::Local(local) = failure {
        balancer.service.report(endpoint, Outcome::LocalOrigin(local));
        balancer.metrics.upstream_error(&balancer.service.name, local);
    }
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
