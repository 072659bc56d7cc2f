//! docs/metrics.md and the Grafana dashboard name exactly the metrics the agent exports.

use std::{collections::BTreeSet, path::Path, sync::Arc};

use std::time::Duration;

use sockeye::{
    config::Protocol,
    datapath::Recorder,
    metrics::Metrics,
    state::{Lifecycle, LocalOriginFailure, State, Transition},
};

fn workspace_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `sockeye_…` word in `text`, with Prometheus's series suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("sockeye_") && w.len() > "sockeye_".len())
        .map(|w| {
            let w = w.strip_suffix("_bucket").unwrap_or(w);
            w.strip_suffix("_total").unwrap_or(w).to_string()
        })
        .collect()
}

/// The metric names the agent exports once every kind of event has happened (a
/// family with no series yet is not printed at all).
fn exported() -> BTreeSet<String> {
    let metrics = Metrics::new(Arc::new(Recorder::default()), Arc::new(State::default()));
    let calls = metrics.calls("s", Protocol::Grpc);
    calls.request();
    calls.response("OK", Duration::from_millis(1));
    metrics.retry("s");
    metrics.retry_budget_exhausted("s");
    metrics.hedge("s");
    metrics.hedge_won("s");
    metrics.hedge_budget_exhausted("s");
    metrics.upstream_error("s", LocalOriginFailure::Reset);
    metrics.transition(&Transition {
        service: "s".into(),
        vip: "10.96.0.1:80".parse().unwrap(),
        addr: "10.10.0.2:80".parse().unwrap(),
        from: Some(Lifecycle::Ready),
        to: Lifecycle::Ejected,
    });
    metrics.evicted("s", 1);
    metrics.limit_hit("global");
    metrics.config_update(false);
    let _open = metrics.connection("h2");
    let _tunnel = metrics.tunnel("s", "upgrade");
    metrics
        .encode()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn docs_list_every_exported_metric_and_no_other() {
    let documented = metric_names(&workspace_file("docs/metrics.md"));
    assert_eq!(documented, exported());
}

#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&workspace_file("deploy/grafana/sockeye-dashboard.json")).unwrap();
    let exported = exported();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(!panels.is_empty());
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty());
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let used = metric_names(expr);
            assert!(!used.is_empty() && used.is_subset(&exported), "{expr}: {used:?}");
        }
    }
}
