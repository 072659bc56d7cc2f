//! Label values with a bounded set: a metric never grows a series per Pod IP, per
//! connection, or past a hard cap of services.

use std::{
    collections::HashSet,
    sync::{Arc, RwLock},
};

use prometheus_client::encoding::EncodeLabelSet;

/// The label value every service past the cap shares.
pub const OTHER: &str = "other";

/// Service names as label values: the first `cap` names seen keep their own value,
/// every later one is counted as [`OTHER`].
#[derive(Debug)]
pub struct ServiceNames {
    cap: usize,
    seen: RwLock<HashSet<Arc<str>>>,
    other: Arc<str>,
}

impl ServiceNames {
    pub fn new(cap: usize) -> Self {
        Self { cap, seen: RwLock::default(), other: OTHER.into() }
    }

    pub fn label(&self, name: &str) -> Arc<str> {
        if let Some(known) = crate::sync::read(&self.seen).get(name) {
            return known.clone();
        }
        let mut seen = crate::sync::write(&self.seen);
        if let Some(known) = seen.get(name) {
            return known.clone();
        }
        if seen.len() >= self.cap {
            return self.other.clone();
        }
        let name: Arc<str> = name.into();
        seen.insert(name.clone());
        name
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceProtocol {
    pub service: Arc<str>,
    pub protocol: &'static str,
}

/// `code` is a gRPC status name (`OK`, `UNAVAILABLE`, …) or an HTTP status class
/// (`2xx`, `5xx`): at most 17 + 5 values.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceCode {
    pub service: Arc<str>,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceReason {
    pub service: Arc<str>,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceState {
    pub service: Arc<str>,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// `global` (`limits.max_connections`) or `endpoint`
    /// (`limits.max_connections_per_endpoint`).
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `applied` or `rejected`.
    pub result: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_past_the_cap_share_other() {
        let names = ServiceNames::new(2);
        assert_eq!(&*names.label("a"), "a");
        assert_eq!(&*names.label("b"), "b");
        assert_eq!(&*names.label("c"), OTHER);
        assert_eq!(&*names.label("a"), "a", "known names keep their value");
    }
}
