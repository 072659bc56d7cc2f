//! The kernel-mode maps (see `proxy_common::lb`): each kernel-mode VIP's two slot
//! tables, rewritten only when its endpoints change, and the connect counts the kernel
//! keeps per endpoint.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError, PerCpuHashMap, RingBuf},
};
use proxy_common::{
    SockAddr,
    lb::{BackendSlot, ConnectStats, LbService, MAX_BACKENDS, Rewrite},
    map_names,
};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::{debug, warn};

use super::{DatapathError, KernelFailure};
use crate::sys;

/// Failed connects read from the kernel and not yet taken by the agent; more are
/// dropped (they are counted per endpoint all the same).
const FAILURE_QUEUE: usize = 1024;

pub struct LbMaps {
    services: HashMap<MapData, SockAddr, LbService>,
    backends: HashMap<MapData, BackendSlot, SockAddr>,
    connects: PerCpuHashMap<MapData, Rewrite, ConnectStats>,
    /// The endpoints this agent wrote for each VIP.
    written: BTreeMap<SockAddr, Vec<SockAddr>>,
    /// Whether this agent wrote the maps yet: until then they may hold what a
    /// previous agent left, which is rewritten or removed as a whole.
    synced: bool,
}

impl LbMaps {
    pub fn new(
        services: HashMap<MapData, SockAddr, LbService>,
        backends: HashMap<MapData, BackendSlot, SockAddr>,
        connects: PerCpuHashMap<MapData, Rewrite, ConnectStats>,
    ) -> Self {
        Self { services, backends, connects, written: BTreeMap::new(), synced: false }
    }

    /// Makes the kernel-mode VIPs exactly `wanted`'s, each with its endpoints.
    pub fn set(
        &mut self,
        wanted: &BTreeMap<SocketAddr, Vec<SocketAddr>>,
    ) -> Result<(), DatapathError> {
        let wanted: BTreeMap<SockAddr, Vec<SockAddr>> = wanted
            .iter()
            .map(|(vip, endpoints)| (SockAddr::from(*vip), table(vip, endpoints)))
            .collect();
        let mut present: BTreeSet<SockAddr> = self.written.keys().copied().collect();
        if !self.synced {
            present.extend(self.services.keys().filter_map(Result::ok));
        }
        for vip in present.iter().filter(|vip| !wanted.contains_key(vip)) {
            self.remove(vip)?;
        }
        for (vip, endpoints) in &wanted {
            let unchanged = if self.synced {
                self.written.get(vip) == Some(endpoints)
            } else {
                // A table a previous agent left as it should be stays as it is.
                self.read(vip)?.as_ref() == Some(endpoints)
            };
            if unchanged {
                self.written.insert(*vip, endpoints.clone());
                continue;
            }
            self.write(vip, endpoints)?;
        }
        self.synced = true;
        Ok(())
    }

    /// Fills the VIP's idle table with `endpoints`, switches to it, then empties the
    /// other one: a connect meets one whole table or the other.
    fn write(&mut self, vip: &SockAddr, endpoints: &[SockAddr]) -> Result<(), DatapathError> {
        let old = self.live(vip)?;
        let table = old.map_or(0, |old| (old.table & 1) ^ 1);
        let service =
            LbService { count: endpoints.len() as u32, table, next: random_start(), reserved: 0 };
        for (index, endpoint) in endpoints.iter().enumerate() {
            self.backends
                .insert(service.slot(*vip, index as u32), endpoint, 0)
                .map_err(DatapathError::map(map_names::LB_BACKENDS))?;
        }
        self.services
            .insert(vip, service, 0)
            .map_err(DatapathError::map(map_names::LB_SERVICES))?;
        if let Some(old) = old {
            self.clear(vip, &old)?;
        }
        self.written.insert(*vip, endpoints.to_vec());
        debug!(vip = %SocketAddr::from(*vip), endpoints = endpoints.len(), table, "kernel-mode table written");
        Ok(())
    }

    /// Takes a VIP out of kernel mode: its connects go to the agent from now on.
    fn remove(&mut self, vip: &SockAddr) -> Result<(), DatapathError> {
        if let Some(old) = self.live(vip)? {
            ignore_missing(self.services.remove(vip))
                .map_err(DatapathError::map(map_names::LB_SERVICES))?;
            self.clear(vip, &old)?;
        }
        let counted: Vec<Rewrite> =
            self.connects.keys().filter_map(Result::ok).filter(|r| r.vip == *vip).collect();
        for key in &counted {
            ignore_missing(self.connects.remove(key))
                .map_err(DatapathError::map(map_names::LB_CONNECTS))?;
        }
        self.written.remove(vip);
        debug!(vip = %SocketAddr::from(*vip), "kernel mode off");
        Ok(())
    }

    fn live(&self, vip: &SockAddr) -> Result<Option<LbService>, DatapathError> {
        match self.services.get(vip, 0) {
            Ok(service) => Ok(Some(service)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(DatapathError::map(map_names::LB_SERVICES)(err)),
        }
    }

    /// The endpoints of the VIP's live table, if it has one and it is whole.
    fn read(&self, vip: &SockAddr) -> Result<Option<Vec<SockAddr>>, DatapathError> {
        let Some(live) = self.live(vip)? else { return Ok(None) };
        let mut endpoints = Vec::with_capacity(live.count as usize);
        for index in 0..live.count.min(MAX_BACKENDS as u32) {
            match self.backends.get(&live.slot(*vip, index), 0) {
                Ok(endpoint) => endpoints.push(endpoint),
                Err(MapError::KeyNotFound) => return Ok(None),
                Err(err) => return Err(DatapathError::map(map_names::LB_BACKENDS)(err)),
            }
        }
        Ok(Some(endpoints))
    }

    /// Removes the slots of a table no connect reads any more.
    fn clear(&mut self, vip: &SockAddr, old: &LbService) -> Result<(), DatapathError> {
        for index in 0..old.count.min(MAX_BACKENDS as u32) {
            ignore_missing(self.backends.remove(&old.slot(*vip, index)))
                .map_err(DatapathError::map(map_names::LB_BACKENDS))?;
        }
        Ok(())
    }

    /// The kernel's connect counts per (VIP, endpoint), summed over CPUs.
    pub fn connects(&self) -> Result<Vec<(Rewrite, ConnectStats)>, DatapathError> {
        let mut totals = Vec::new();
        for entry in self.connects.iter() {
            let (key, per_cpu) = entry.map_err(DatapathError::map(map_names::LB_CONNECTS))?;
            let mut total = ConnectStats::default();
            per_cpu.iter().for_each(|cpu| total.add(cpu));
            totals.push((key, total));
        }
        Ok(totals)
    }
}

/// Reads the kernel's failed connects as they happen and hands them on. `None` (with a
/// warning) when the ring buffer cannot be read: outlier detection then hears only of
/// failures the agent's own connects see.
pub fn failure_pump(ebpf: &mut Ebpf) -> Option<mpsc::Receiver<KernelFailure>> {
    let ring = ebpf.take_map(map_names::LB_FAILURES).ok_or_else(|| "map missing".to_string());
    let ring = ring.and_then(|ring| RingBuf::try_from(ring).map_err(|err| err.to_string()));
    let ring = match ring.and_then(|ring| sys::readable_fd(ring).map_err(|err| err.to_string())) {
        Ok(ring) => ring,
        Err(err) => {
            warn!("kernel-mode connect failures are not read as they happen: {err}");
            return None;
        }
    };
    let (tx, rx) = mpsc::channel(FAILURE_QUEUE);
    tokio::spawn(pump_failures(ring, tx));
    Some(rx)
}

async fn pump_failures(mut ring: AsyncFd<RingBuf<MapData>>, tx: mpsc::Sender<KernelFailure>) {
    while let Ok(mut guard) = ring.readable_mut().await {
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let Some(rewrite) = decode(&item) else { continue };
            if tx.is_closed() {
                return;
            }
            let _ = tx.try_send((rewrite.vip.into(), rewrite.to.into()));
        }
        guard.clear_ready();
    }
}

/// A ring buffer record: one `Rewrite`, two `SockAddr`s in the kernel's byte order.
fn decode(bytes: &[u8]) -> Option<Rewrite> {
    let addr = |b: &[u8]| {
        let word = |at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        SockAddr {
            ip: [word(0), word(4), word(8), word(12)],
            port: u16::from_ne_bytes([b[16], b[17]]),
            family: u16::from_ne_bytes([b[18], b[19]]),
        }
    };
    (bytes.len() == 40).then(|| Rewrite { vip: addr(&bytes[..20]), to: addr(&bytes[20..]) })
}

/// A VIP's endpoints as a table: its own family only (a connect cannot change family),
/// each once, in address order, at most [`MAX_BACKENDS`].
fn table(vip: &SocketAddr, endpoints: &[SocketAddr]) -> Vec<SockAddr> {
    let fitting: BTreeSet<SockAddr> = endpoints
        .iter()
        .filter(|e| e.is_ipv4() == vip.is_ipv4())
        .map(|e| SockAddr::from(*e))
        .collect();
    if fitting.len() > MAX_BACKENDS {
        warn!(%vip, endpoints = fitting.len(), "kernel mode takes the first {MAX_BACKENDS} endpoints");
    }
    fitting.into_iter().take(MAX_BACKENDS).collect()
}

fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// Where a new table's round robin starts: anywhere, so nodes do not move in step.
fn random_start() -> u32 {
    use std::hash::BuildHasher as _;
    std::hash::RandomState::new().hash_one(std::time::Instant::now()) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_holds_each_endpoint_of_the_vips_family_once_in_order() {
        let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let endpoints: Vec<SocketAddr> =
            ["10.10.0.4:80", "[fd10::3]:80", "10.10.0.3:80", "10.10.0.4:80"]
                .iter()
                .map(|e| e.parse().unwrap())
                .collect();
        let want: Vec<SockAddr> = ["10.10.0.3:80", "10.10.0.4:80"]
            .iter()
            .map(|e| SockAddr::from(e.parse::<SocketAddr>().unwrap()))
            .collect();
        assert_eq!(table(&vip, &endpoints), want);
        assert!(table(&"[fd96::1]:80".parse().unwrap(), &endpoints[..1]).is_empty());
    }

    #[test]
    fn a_failure_record_decodes_as_the_kernel_wrote_it() {
        let rewrite = Rewrite {
            vip: SockAddr::from("[fd96::10]:7000".parse::<SocketAddr>().unwrap()),
            to: SockAddr::from("10.10.0.3:7000".parse::<SocketAddr>().unwrap()),
        };
        let mut bytes = Vec::new();
        for addr in [rewrite.vip, rewrite.to] {
            addr.ip.iter().for_each(|w| bytes.extend_from_slice(&w.to_ne_bytes()));
            bytes.extend_from_slice(&addr.port.to_ne_bytes());
            bytes.extend_from_slice(&addr.family.to_ne_bytes());
        }
        assert_eq!(decode(&bytes), Some(rewrite));
        assert_eq!(decode(&bytes[..39]), None);
    }
}
