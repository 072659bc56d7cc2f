use futures::channel::mpsc;
use http_body_util::{BodyExt as _, StreamBody};

use super::*;
use crate::{
    config::{Policy, Protocol},
    datapath::Recorder,
    metrics::Metrics,
    state::{Lifecycle, State},
};

type Sender = mpsc::UnboundedSender<Result<Frame<Bytes>, std::io::Error>>;
type UpstreamBody = StreamBody<mpsc::UnboundedReceiver<Result<Frame<Bytes>, std::io::Error>>>;

/// A gRPC response body from a test upstream, and what its end is reported to.
type Outcomes = tokio::sync::mpsc::Receiver<(Arc<Endpoint>, Outcome)>;

fn watched() -> (Sender, ResponseBody<UpstreamBody>, Outcomes, Arc<Endpoint>) {
    let service =
        Service::new("greeter", "10.96.0.1:80".parse().unwrap(), Protocol::Grpc, Policy::default());
    let outcomes = service.reports();
    let metrics = Metrics::new(Arc::new(Recorder::default()), Arc::new(State::default()));
    let calls = Arc::new(metrics.calls(&service.name, service.protocol));
    let endpoint = Endpoint::new("10.10.0.2:80".parse().unwrap(), Lifecycle::Ready);
    let settle = Settle {
        service,
        calls,
        endpoint: endpoint.clone(),
        upstream: Upstream::new(endpoint.addr),
        in_flight: InFlight::new(endpoint.clone()),
        latency: Duration::from_millis(3),
        call_started: Instant::now(),
        at_trailers: true,
    };
    let (tx, rx) = mpsc::unbounded();
    (tx, ResponseBody::new(StreamBody::new(rx), settle), outcomes, endpoint)
}

fn in_flight(endpoint: &Endpoint) -> u32 {
    endpoint.load.outstanding.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn a_grpc_status_in_the_trailers_is_reported_when_the_stream_ends() {
    let (tx, mut body, mut outcomes, endpoint) = watched();
    tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"message")))).unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "14".parse().unwrap());
    tx.unbounded_send(Ok(Frame::trailers(trailers))).unwrap();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    assert_eq!(in_flight(&endpoint), 1, "in flight until the stream ends");
    assert!(outcomes.try_recv().is_err(), "nothing known before the trailers");
    assert!(body.frame().await.unwrap().unwrap().is_trailers());
    let (_, outcome) = outcomes.try_recv().unwrap();
    assert_eq!(outcome, Outcome::Response { status: 503, latency: Duration::from_millis(3) });
    assert_eq!(in_flight(&endpoint), 0);
}

#[tokio::test]
async fn an_upstream_failing_mid_stream_ends_the_call_with_unavailable_trailers() {
    let (tx, mut body, mut outcomes, endpoint) = watched();
    tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"message")))).unwrap();
    tx.unbounded_send(Err(std::io::ErrorKind::BrokenPipe.into())).unwrap();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    let end = body.frame().await.unwrap().expect("trailers, not an error");
    let trailers = end.into_trailers().unwrap();
    assert_eq!(grpc::status(&trailers), Some(grpc::UNAVAILABLE));
    let message = trailers["grpc-message"].to_str().unwrap();
    assert!(message.contains("10.10.0.2:80") && message.contains("failed"), "{message}");
    assert!(body.frame().await.is_none(), "nothing after the trailers");
    assert!(body.is_end_stream());
    let (_, outcome) = outcomes.try_recv().unwrap();
    assert_eq!(outcome, Outcome::LocalOrigin(LocalOriginFailure::Reset));
    assert_eq!(in_flight(&endpoint), 0);
}

#[tokio::test]
async fn a_client_that_goes_away_reports_nothing_and_stops_counting() {
    let (_tx, body, mut outcomes, endpoint) = watched();
    drop(body);
    assert!(outcomes.try_recv().is_err());
    assert_eq!(in_flight(&endpoint), 0);
}

#[test]
fn verdicts_tell_trailers_only_answers_from_streams() {
    let response = |status: u16, grpc_status: Option<&str>| {
        let mut builder = Response::builder().status(status);
        if let Some(code) = grpc_status {
            builder = builder.header("grpc-status", code);
        }
        builder.body(()).unwrap()
    };
    assert_eq!(verdict(true, &response(200, None)), Verdict::AtTrailers);
    assert_eq!(
        verdict(true, &response(200, Some("14"))),
        Verdict::Known { status: 503, answer: TryFailure::Status { http: 200, grpc: Some(14) } }
    );
    assert_eq!(
        verdict(false, &response(502, None)),
        Verdict::Known { status: 502, answer: TryFailure::Status { http: 502, grpc: None } }
    );
}
