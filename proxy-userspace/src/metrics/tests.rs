use std::{collections::BTreeSet, time::Duration};

use super::*;
use crate::{datapath::Recorder, state::Lifecycle};

fn metrics() -> Arc<Metrics> {
    Metrics::new(Arc::new(Recorder::default()), Arc::new(State::default()))
}

/// The distinct values of `label` across the series of `metric`.
fn label_values(text: &str, metric: &str, label: &str) -> BTreeSet<String> {
    let key = format!("{label}=\"");
    text.lines()
        .filter(|l| l.starts_with(metric))
        .filter_map(|l| Some(l.split(&key).nth(1)?.split('"').next()?.to_string()))
        .collect()
}

#[test]
fn counts_requests_responses_and_transitions_under_sockeye_names() {
    let m = metrics();
    let calls = m.calls("greeter", Protocol::Grpc);
    calls.request();
    calls.request();
    calls.response(grpc_code_name(14), Duration::from_millis(3));
    m.retry("greeter");
    m.upstream_error("greeter", LocalOriginFailure::ConnectRefused);
    m.transition(&Transition {
        service: "greeter".into(),
        vip: "10.96.0.10:50051".parse().unwrap(),
        addr: "10.10.0.2:50051".parse().unwrap(),
        from: Some(Lifecycle::Ready),
        to: Lifecycle::Ejected,
    });
    let open = m.connection("h2");
    let text = m.encode();
    for line in [
        "sockeye_requests_total{service=\"greeter\",protocol=\"grpc\"} 2",
        "sockeye_responses_total{service=\"greeter\",code=\"UNAVAILABLE\"} 1",
        "sockeye_retries_total{service=\"greeter\"} 1",
        "sockeye_upstream_connect_errors_total{service=\"greeter\",reason=\"connect_refused\"} 1",
        "sockeye_endpoint_transitions_total{service=\"greeter\",state=\"ejected\"} 1",
        "sockeye_ejections_total{service=\"greeter\"} 1",
        "sockeye_active_connections{protocol=\"h2\"} 1",
        "sockeye_request_duration_seconds_count{service=\"greeter\"} 1",
        "sockeye_kernel_events_total{event=\"steered\"} 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    drop(open);
    assert!(m.encode().contains("sockeye_active_connections{protocol=\"h2\"} 0"));
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("sockeye_"), "{line}");
    }
}

#[test]
fn ten_thousand_services_stay_within_the_series_cap() {
    let m = metrics();
    for i in 0..10_000 {
        let name = format!("service-{i}");
        let calls = m.calls(&name, Protocol::Grpc);
        calls.request();
        calls.response("OK", Duration::from_millis(1));
    }
    let text = m.encode();
    for metric in ["sockeye_requests_total", "sockeye_responses_total", "sockeye_request_duration"]
    {
        let values = label_values(&text, metric, "service");
        assert_eq!(values.len(), SERVICE_CAP + 1, "{metric}");
        assert!(values.contains(OTHER), "{metric}");
    }
    let other = format!(
        "sockeye_requests_total{{service=\"{OTHER}\",protocol=\"grpc\"}} {}",
        10_000 - SERVICE_CAP
    );
    assert!(text.contains(&other), "the overflow keeps the count: {other}");
}

#[tokio::test(start_paused = true)]
async fn endpoint_states_are_read_at_scrape() {
    use crate::{
        config::Policy,
        discovery::{Condition, DesiredEndpoint, DesiredService},
    };
    let state = Arc::new(State::with_checker(Arc::new(crate::health::Manual)));
    let m = Metrics::new(Arc::new(Recorder::default()), state.clone());
    state.apply(&[DesiredService {
        name: "echo".into(),
        vip: "10.96.0.1:80".parse().unwrap(),
        protocol: Protocol::Tcp,
        policy: Policy::default(),
        endpoints: vec![DesiredEndpoint {
            addr: "10.10.0.2:80".parse().unwrap(),
            condition: Condition::NotReady,
        }],
    }]);
    // Started by a connection: a service nobody uses has no endpoint states.
    let in_use = state.open(&"10.96.0.1:80".parse().unwrap()).unwrap();
    in_use.watch_endpoints().wait_for(|set| !set.all.is_empty()).await.unwrap();
    let text = m.encode();
    assert!(text.contains("sockeye_endpoints{service=\"echo\",state=\"warming\"} 1"), "{text}");
}
