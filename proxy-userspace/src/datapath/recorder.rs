//! A datapath that records what it is told, for tests that run without a kernel.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::Mutex,
};

use proxy_common::{Counter, OrigDst, SockAddr};
use tokio::sync::mpsc;

use super::{Datapath, DatapathError, KernelConnects, KernelFailure, MapUsage};
use crate::config::Capacity;

#[derive(Default)]
pub struct Recorder {
    pub capacity: Capacity,
    pub enrolled: Mutex<BTreeSet<u64>>,
    /// Enrolled namespaces marked at their connection cap.
    pub full_netns: Mutex<BTreeSet<u64>>,
    pub vips: Mutex<BTreeSet<SocketAddr>>,
    pub full: Mutex<bool>,
    pub beats: Mutex<u64>,
    /// What `take_orig_dst` answers, keyed by client address: the original
    /// destination and the client's namespace cookie.
    pub orig_dst: Mutex<HashMap<SocketAddr, (SocketAddr, u64)>>,
    /// The VIPs in kernel mode and their endpoints, as last set.
    pub kernel_services: Mutex<BTreeMap<SocketAddr, Vec<SocketAddr>>>,
    /// What `kernel_connects` answers.
    pub kernel_connects: Mutex<Vec<KernelConnects>>,
    /// What `take_kernel_failures` hands over.
    pub kernel_failures: Mutex<Option<mpsc::Receiver<KernelFailure>>>,
}

impl Datapath for Recorder {
    fn capacity(&self) -> Capacity {
        self.capacity
    }

    fn set_enrolled(&self, cookies: &BTreeSet<u64>) -> Result<(), DatapathError> {
        *self.enrolled.lock().unwrap() = cookies.clone();
        self.full_netns.lock().unwrap().retain(|c| cookies.contains(c));
        Ok(())
    }

    fn set_netns_full(&self, cookie: u64, full: bool) -> Result<(), DatapathError> {
        let mut marked = self.full_netns.lock().unwrap();
        if full && self.enrolled.lock().unwrap().contains(&cookie) {
            marked.insert(cookie);
        } else {
            marked.remove(&cookie);
        }
        Ok(())
    }

    fn set_vips(&self, vips: &BTreeSet<SocketAddr>) -> Result<(), DatapathError> {
        *self.vips.lock().unwrap() = vips.clone();
        Ok(())
    }

    fn set_full(&self, full: bool) -> Result<(), DatapathError> {
        *self.full.lock().unwrap() = full;
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
    ) -> Result<Option<OrigDst>, DatapathError> {
        let filed = self.orig_dst.lock().unwrap().remove(&client);
        Ok(filed.map(|(dst, netns)| OrigDst { dst: SockAddr::from(dst), reserved: 0, netns }))
    }

    fn usage(&self) -> Vec<MapUsage> {
        let (vips, pods) = (self.vips.lock().unwrap().len(), self.enrolled.lock().unwrap().len());
        MapUsage::of(&self.capacity, vips, pods)
    }

    fn full(&self) -> bool {
        *self.full.lock().unwrap()
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
