//! A datapath that records what it is told, for tests that run without a kernel.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::Mutex,
};

use proxy_common::Counter;
use tokio::sync::mpsc;

use super::{Datapath, DatapathError, KernelConnects, KernelFailure};

#[derive(Default)]
pub struct Recorder {
    pub enrolled: Mutex<BTreeSet<u64>>,
    pub vips: Mutex<BTreeSet<SocketAddr>>,
    pub beats: Mutex<u64>,
    /// What `take_orig_dst` answers, keyed by client address.
    pub orig_dst: Mutex<HashMap<SocketAddr, SocketAddr>>,
    /// The VIPs in kernel mode and their endpoints, as last set.
    pub kernel_services: Mutex<BTreeMap<SocketAddr, Vec<SocketAddr>>>,
    /// What `kernel_connects` answers.
    pub kernel_connects: Mutex<Vec<KernelConnects>>,
    /// What `take_kernel_failures` hands over.
    pub kernel_failures: Mutex<Option<mpsc::Receiver<KernelFailure>>>,
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

    fn set_kernel_services(
        &self,
        services: &BTreeMap<SocketAddr, Vec<SocketAddr>>,
    ) -> Result<(), DatapathError> {
        *self.kernel_services.lock().unwrap() = services.clone();
        Ok(())
    }

    fn kernel_connects(&self) -> Result<Vec<KernelConnects>, DatapathError> {
        Ok(self.kernel_connects.lock().unwrap().clone())
    }

    fn take_kernel_failures(&self) -> Option<mpsc::Receiver<KernelFailure>> {
        self.kernel_failures.lock().unwrap().take()
    }
}
