//! What `sk-pod tcp-probe` reports: one JSON object on its last output line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub ok: usize,
    pub failed: usize,
    /// Successful connections per backend name (what the backend said it was).
    pub backends: BTreeMap<String, usize>,
    /// Successful connections per client address the backend saw (without port).
    pub peers: BTreeMap<String, usize>,
    /// Failed connections per error.
    pub errors: BTreeMap<String, usize>,
    /// Successful connections per peer address (with port) that getpeername() gave
    /// the client.
    #[serde(default)]
    pub remote_addrs: BTreeMap<String, usize>,
}

impl Report {
    /// Reads the report from a probe's output (its last non-empty line).
    pub fn parse(output: &str) -> anyhow::Result<Self> {
        crate::last_json_line(output, "probe report")
    }

    /// The only client address backends saw, if there was exactly one.
    pub fn only_peer(&self) -> Option<&str> {
        let mut peers = self.peers.keys();
        match (peers.next(), peers.next()) {
            (Some(peer), None) => Some(peer),
            _ => None,
        }
    }

    pub fn backend_names(&self) -> Vec<&str> {
        self.backends.keys().map(String::as_str).collect()
    }
}
