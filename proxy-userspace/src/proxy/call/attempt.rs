//! One try: the call's request, with a fresh view of its replay body, on one
//! endpoint's pooled connection, until response headers arrive, the send fails, the
//! try's deadline passes, or the endpoint is gone.

use std::{sync::Arc, time::Duration};

use http::Response;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::Call;
use crate::{
    balance::{InFlight, pewma},
    config::Policy,
    retry::TryFailure,
    state::{Endpoint, LocalOriginFailure},
    upstream::{Balancer, SendError, Upstream},
};

/// A try that got response headers.
pub struct Answered {
    pub response: Response<Incoming>,
    pub endpoint: Arc<Endpoint>,
    pub upstream: Arc<Upstream>,
    /// Counts the request as in flight to the endpoint until its response ends.
    pub in_flight: InFlight,
    /// Time to response headers.
    pub latency: Duration,
}

pub async fn send(
    balancer: &Balancer,
    call: &Call,
    policy: &Policy,
    endpoint: Arc<Endpoint>,
) -> Result<Answered, TryFailure> {
    let upstream = balancer.upstream(endpoint.addr);
    let in_flight = InFlight::new(endpoint.clone());
    let started = Instant::now();
    let (request, generation) = call.request();
    let result = tokio::select! {
        result = upstream.send(request, policy.timeout.connect) => result.map_err(failure),
        () = call.deadlines.expire(started, || call.body.progress()) => {
            Err(TryFailure::Local(LocalOriginFailure::Timeout))
        }
        // The endpoint went away (drain deadline): give up the try, so it is retried.
        () = upstream.closed() => Err(TryFailure::Local(LocalOriginFailure::Reset)),
    };
    // A body the agent stopped (a hedge took the client's body over) is not the
    // endpoint's failure.
    let response = result
        .map_err(|f| if call.body.spoiled(generation) { TryFailure::Superseded } else { f })?;
    let latency = started.elapsed();
    pewma::observe(&endpoint.load, latency);
    Ok(Answered { response, endpoint, upstream, in_flight, latency })
}

fn failure(err: SendError) -> TryFailure {
    match err {
        SendError::Connect(local) => TryFailure::Local(local),
        SendError::Refused => TryFailure::RefusedStream,
        SendError::Reset => TryFailure::Local(LocalOriginFailure::Reset),
    }
}
