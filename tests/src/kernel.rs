//! What the agent's pinned maps say, read the way any tool on the node could.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap};
use proxy_common::{
    AgentState, Counter, FourTuple, OrigDst, SockAddr,
    lb::{BackendSlot, ConnectStats, LbService, Rewrite},
    map_names,
};

use crate::sys::monotonic_ns;

/// The kernel programs' counters, by name, summed over CPUs.
pub fn counters(pin_dir: &Path) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let path = pin_dir.join(map_names::COUNTERS);
    let data = MapData::from_pin(&path).with_context(|| format!("{}", path.display()))?;
    let map = PerCpuArray::<_, u64>::try_from(Map::PerCpuArray(data))?;
    Counter::ALL.iter().map(|c| Ok((c.name(), map.get(&(*c as u32), 0)?.iter().sum()))).collect()
}

/// How many sockets are in the acceleration map, and how many connections fell back.
pub fn socket_map_entries(pin_dir: &Path) -> anyhow::Result<(usize, usize)> {
    let path = pin_dir.join(map_names::SOCKS);
    let data = MapData::from_pin(&path).with_context(|| format!("{}", path.display()))?;
    let socks = aya::maps::SockHash::<_, FourTuple>::try_from(Map::SockHash(data))?;
    let path = pin_dir.join(map_names::NO_ACCEL);
    let data = MapData::from_pin(&path).with_context(|| format!("{}", path.display()))?;
    let fallen = HashMap::<_, FourTuple, u8>::try_from(Map::LruHashMap(data))?;
    Ok((socks.keys().count(), fallen.keys().count()))
}

/// How many original destinations are filed and not yet taken by the agent.
pub fn pending_orig_dst(pin_dir: &Path) -> anyhow::Result<usize> {
    let path = pin_dir.join(map_names::ORIG_BY_TUPLE);
    let data = MapData::from_pin(&path).with_context(|| format!("{}", path.display()))?;
    let map = HashMap::<_, FourTuple, OrigDst>::try_from(Map::LruHashMap(data))?;
    Ok(map.keys().count())
}

/// How many VIPs the kernel steers.
pub fn vip_count(pin_dir: &Path) -> anyhow::Result<usize> {
    let path = pin_dir.join(map_names::VIPS);
    let data = MapData::from_pin(&path).with_context(|| format!("{}", path.display()))?;
    let map = HashMap::<_, proxy_common::SockAddr, u8>::try_from(Map::HashMap(data))?;
    Ok(map.keys().count())
}

/// How long ago the agent last wrote its heartbeat, by the clock the kernel reads.
pub fn heartbeat_age(pin_dir: &Path) -> anyhow::Result<Duration> {
    let path = pin_dir.join(map_names::AGENT);
    let data = MapData::from_pin(&path).with_context(|| format!("{}", path.display()))?;
    let map = Array::<_, AgentState>::try_from(Map::Array(data))?;
    let state = map.get(&0, 0)?;
    Ok(Duration::from_nanos(monotonic_ns().saturating_sub(state.heartbeat_ns)))
}

/// The kernel-mode VIPs and the endpoints of each one's live table, in slot order.
pub fn lb_tables(pin_dir: &Path) -> anyhow::Result<BTreeMap<SocketAddr, Vec<SocketAddr>>> {
    let services = HashMap::<_, SockAddr, LbService>::try_from(Map::HashMap(pinned(
        pin_dir,
        map_names::LB_SERVICES,
    )?))?;
    let backends = HashMap::<_, BackendSlot, SockAddr>::try_from(Map::HashMap(pinned(
        pin_dir,
        map_names::LB_BACKENDS,
    )?))?;
    let mut tables = BTreeMap::new();
    for entry in services.iter() {
        let (vip, service) = entry?;
        let slots = (0..service.count)
            .map(|index| Ok(SocketAddr::from(backends.get(&service.slot(vip, index), 0)?)))
            .collect::<anyhow::Result<_>>()?;
        tables.insert(SocketAddr::from(vip), slots);
    }
    Ok(tables)
}

/// The kernel's counts of connects it sent straight to each (VIP, endpoint), summed
/// over CPUs.
pub fn lb_connects(
    pin_dir: &Path,
) -> anyhow::Result<BTreeMap<(SocketAddr, SocketAddr), ConnectStats>> {
    let data = pinned(pin_dir, map_names::LB_CONNECTS)?;
    let map = PerCpuHashMap::<_, Rewrite, ConnectStats>::try_from(Map::PerCpuLruHashMap(data))?;
    let mut totals = BTreeMap::new();
    for entry in map.iter() {
        let (key, per_cpu) = entry?;
        let mut total = ConnectStats::default();
        per_cpu.iter().for_each(|cpu| total.add(cpu));
        totals.insert((key.vip.into(), key.to.into()), total);
    }
    Ok(totals)
}

/// The kernel's id of a pinned map: the same id after a restart means the map was
/// adopted, not made anew.
pub fn map_id(pin_dir: &Path, name: &str) -> anyhow::Result<u32> {
    let path = pin_dir.join(name);
    Ok(aya::maps::MapInfo::from_pin(&path).with_context(|| format!("{}", path.display()))?.id())
}

fn pinned(pin_dir: &Path, name: &str) -> anyhow::Result<MapData> {
    let path = pin_dir.join(name);
    MapData::from_pin(&path).with_context(|| format!("{}", path.display()))
}
