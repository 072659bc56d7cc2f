//! The maps shared with the agent, pinned by name under the agent's bpffs directory.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_map_lookup_elem, bpf_sk_release},
    macros::map,
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf, SockHash, SockMap},
};
use proxy_common::{
    AgentState, Counter, FourTuple, OrigDst, SockAddr,
    lb::{BackendSlot, ConnectStats, LbService, Rewrite},
    map_sizes,
};

#[map(name = "SK_ENROLLED")]
pub static ENROLLED: HashMap<u64, u8> = HashMap::pinned(map_sizes::ENROLLED, 0);

#[map(name = "SK_VIPS")]
pub static VIPS: HashMap<SockAddr, u8> = HashMap::pinned(map_sizes::VIPS, 0);

#[map(name = "SK_AGENT")]
pub static AGENT: Array<AgentState> = Array::pinned(1, 0);

#[map(name = "SK_ORIG_COOKIE")]
pub static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::pinned(map_sizes::ORIG_DST, 0);

#[map(name = "SK_ORIG_TUPLE")]
pub static ORIG_BY_TUPLE: LruHashMap<FourTuple, OrigDst> =
    LruHashMap::pinned(map_sizes::ORIG_DST, 0);

#[map(name = "SK_SOCKS")]
pub static SOCKS: SockHash<FourTuple> = SockHash::pinned(map_sizes::SOCKS, 0);

#[map(name = "SK_NO_ACCEL")]
pub static NO_ACCEL: LruHashMap<FourTuple, u8> = LruHashMap::pinned(map_sizes::NO_ACCEL, 0);

#[map(name = "SK_LISTENERS")]
pub static LISTENERS: SockMap = SockMap::pinned(map_sizes::LISTENERS, 0);

#[map(name = "SK_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::SLOTS, 0);

/// Not preallocated: the kernel writes each service's cursor in place, and an entry
/// the agent replaces meanwhile must not be reused for another service under it.
#[map(name = "SK_LB_SERVICES")]
pub static LB_SERVICES: HashMap<SockAddr, LbService> =
    HashMap::pinned(map_sizes::VIPS, BPF_F_NO_PREALLOC);

#[map(name = "SK_LB_BACKENDS")]
pub static LB_BACKENDS: HashMap<BackendSlot, SockAddr> = HashMap::pinned(map_sizes::LB_BACKENDS, 0);

#[map(name = "SK_LB_CONNECTS")]
pub static LB_CONNECTS: LruPerCpuHashMap<Rewrite, ConnectStats> =
    LruPerCpuHashMap::pinned(map_sizes::LB_CONNECTS, 0);

/// Not pinned: each agent reads its own, from its programs.
#[map(name = "SK_LB_FAILURES")]
pub static LB_FAILURES: RingBuf = RingBuf::with_byte_size(map_sizes::LB_FAILURES, 0);

#[map(name = "SK_REWRITES")]
pub static REWRITES: LruHashMap<u64, Rewrite> = LruHashMap::pinned(map_sizes::REWRITES, 0);

/// Whether the agent's listener in `slot` (see `listener_slot`) is an open socket.
#[inline(always)]
pub fn listening(slot: u32) -> bool {
    let map = (&raw const LISTENERS).cast_mut().cast();
    // SAFETY: `map` is a map the loader relocates, and the key is the map's `u32`.
    let sk = unsafe { bpf_map_lookup_elem(map, (&raw const slot).cast()) };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a socket-map lookup takes a reference on the socket; this gives it back.
    unsafe { bpf_sk_release(sk) };
    true
}

/// Adds one to `counter` on this CPU.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, and programs do not migrate CPUs while running.
        unsafe { *slot += 1 };
    }
}

/// Which of an endpoint's connect counts to add one to.
#[derive(Clone, Copy)]
pub enum ConnectEvent {
    Picked,
    Established,
    Failed,
}

/// Counts one event of a connect the kernel sent to an endpoint, on this CPU. The
/// entry is made when the connect is picked; later events only count where it exists
/// (never for connects steered to the agent). Returns whether it counted.
#[inline(always)]
pub fn count_connect(rewrite: &Rewrite, event: ConnectEvent) -> bool {
    let bump = |stats: &mut ConnectStats| match event {
        ConnectEvent::Picked => stats.picked += 1,
        ConnectEvent::Established => stats.established += 1,
        ConnectEvent::Failed => stats.failed += 1,
    };
    if let Some(stats) = LB_CONNECTS.get_ptr_mut(rewrite) {
        // SAFETY: per-CPU value, and programs do not migrate CPUs while running.
        bump(unsafe { &mut *stats });
        return true;
    }
    if !matches!(event, ConnectEvent::Picked) {
        return false;
    }
    let mut first = ConnectStats::default();
    bump(&mut first);
    if LB_CONNECTS.insert(rewrite, &first, u64::from(BPF_NOEXIST)).is_ok() {
        return true;
    }
    // Another CPU made the entry meanwhile.
    let Some(stats) = LB_CONNECTS.get_ptr_mut(rewrite) else { return false };
    // SAFETY: as above.
    bump(unsafe { &mut *stats });
    true
}
