//! A datapath that records what it is told, for tests that run without a kernel.

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::Mutex,
};

use proxy_common::Counter;

use super::{Datapath, DatapathError};

#[derive(Default)]
pub struct Recorder {
    pub enrolled: Mutex<BTreeSet<u64>>,
    pub vips: Mutex<BTreeSet<SocketAddr>>,
    pub beats: Mutex<u64>,
    /// What `take_orig_dst` answers, keyed by client address.
    pub orig_dst: Mutex<HashMap<SocketAddr, SocketAddr>>,
}

impl Datapath for Recorder {
    fn set_enrolled(&self, cookies: &BTreeSet<u64>) -> Result<(), DatapathError> {
        *self.enrolled.lock().unwrap() = cookies.clone();
        Ok(())
    }

    fn set_vips(&self, vips: &BTreeSet<SocketAddr>) -> Result<(), DatapathError> {
        *self.vips.lock().unwrap() = vips.clone();
        Ok(())
    }

    fn beat(&self) -> Result<(), DatapathError> {
        *self.beats.lock().unwrap() += 1;
        Ok(())
    }

    fn take_orig_dst(
        &self,
        client: SocketAddr,
        _local: SocketAddr,
    ) -> Result<Option<SocketAddr>, DatapathError> {
        Ok(self.orig_dst.lock().unwrap().remove(&client))
    }

    fn counters(&self) -> Result<Vec<(Counter, u64)>, DatapathError> {
        Ok(Counter::ALL.iter().map(|c| (*c, 0)).collect())
    }
}
