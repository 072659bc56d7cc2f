//! Metrics read at scrape time: the kernel's per-CPU counters and endpoint states.

use std::{collections::BTreeMap, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use super::labels::{ServiceNames, ServiceState};
use crate::{
    datapath::Datapath,
    state::{Lifecycle, State},
};

/// `sockeye_kernel_events_total{event}`: what the kernel programs did; how full the
/// kernel maps are; whether the agent told the kernel it is full.
pub struct KernelCounters(pub Arc<dyn Datapath>);

impl std::fmt::Debug for KernelCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelCounters")
    }
}

impl Collector for KernelCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(counters) = self.0.counters() else {
            // The programs are not loaded (yet); a scrape without them is still valid.
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "kernel_events",
            "What the kernel programs did, by event (per-CPU map SK_COUNTERS, summed)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (counter, value) in counters {
            let labels = [("event", counter.name())];
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        let usage = self.0.usage();
        for (name, help, value) in [
            ("kernel_map_entries", "Entries the agent put in a kernel map", true),
            ("kernel_map_capacity", "Capacity of a kernel map (config: capacity)", false),
        ] {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for map in &usage {
                let n = if value { map.entries as i64 } else { i64::from(map.capacity) };
                ConstGauge::new(n).encode(family.encode_family(&[("map", map.map)])?)?;
            }
        }
        let mut full = encoder.encode_descriptor(
            "agent_full",
            "1 while the agent has told the kernel it is full (new connects fail open)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        let no_labels: [(&str, &str); 0] = [];
        ConstGauge::new(i64::from(self.0.full())).encode(full.encode_family(&no_labels)?)?;
        Ok(())
    }
}

/// `sockeye_endpoints{service, state}`: endpoints per lifecycle state right now.
pub struct EndpointStates {
    pub state: Arc<State>,
    pub names: Arc<ServiceNames>,
}

impl std::fmt::Debug for EndpointStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndpointStates")
    }
}

impl Collector for EndpointStates {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut counts: BTreeMap<(Arc<str>, &'static str), i64> = BTreeMap::new();
        for service in self.state.services() {
            let name = self.names.label(&service.name);
            for endpoint in &service.endpoints().all {
                *counts.entry((name.clone(), endpoint.lifecycle().name())).or_default() += 1;
            }
        }
        let mut family = encoder.encode_descriptor(
            "endpoints",
            &format!("Endpoints per service by lifecycle state ({})", state_names()),
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for ((service, state), count) in counts {
            let labels = ServiceState { service, state };
            ConstGauge::new(count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

fn state_names() -> String {
    Lifecycle::ALL.map(Lifecycle::name).join(", ")
}
