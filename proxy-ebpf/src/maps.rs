//! The maps shared with the agent, pinned by name under the agent's bpffs directory.

use aya_ebpf::{
    helpers::{bpf_map_lookup_elem, bpf_sk_release},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, SockHash, SockMap},
};
use proxy_common::{AgentState, Counter, FourTuple, OrigDst, SockAddr, map_sizes};

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
