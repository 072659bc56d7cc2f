//! Types shared by sockeye's kernel programs and its agent.
//!
//! Everything here is `#![no_std]`: map keys and values (`#[repr(C)]`, no implicit
//! padding, so the kernel and userspace hash the same bytes), map names, and the pure
//! decisions the kernel programs take, so the host can test them.
#![no_std]
#![deny(unsafe_code)]

pub mod addr;
pub mod agent;
pub mod counters;
pub mod steer;

#[cfg(feature = "user")]
mod pod;

pub use addr::{FourTuple, OrigDst, SockAddr};
pub use agent::AgentState;
pub use counters::Counter;

/// Names of the kernel maps. They are also the file names the maps are pinned under,
/// so they stay below the kernel's 15-character object-name limit.
pub mod map_names {
    /// Network namespaces whose traffic is steered: `u64` netns cookie → `u8`
    /// ([`enrolled`](crate::enrolled)).
    pub const ENROLLED: &str = "SK_ENROLLED";
    /// Service virtual addresses: `SockAddr` → `u8` (1).
    pub const VIPS: &str = "SK_VIPS";
    /// One `AgentState`: where the agent listens and when it last proved it is alive.
    pub const AGENT: &str = "SK_AGENT";
    /// Original destination of a steered socket, between connect and established:
    /// `u64` socket cookie → `OrigDst`.
    pub const ORIG_BY_COOKIE: &str = "SK_ORIG_COOKIE";
    /// Original destination of an established steered connection, as the agent sees
    /// it after `accept`: `FourTuple` (client → agent) → `OrigDst`.
    pub const ORIG_BY_TUPLE: &str = "SK_ORIG_TUPLE";
    /// Both ends of each accelerated Pod↔agent connection, for sk_msg:
    /// `FourTuple` (local → remote of that socket) → socket.
    pub const SOCKS: &str = "SK_SOCKS";
    /// Accelerated sockets whose messages take the TCP stack after all (sk_msg found
    /// no peer once): `FourTuple` (local → remote) → `u8` (1).
    pub const NO_ACCEL: &str = "SK_NO_ACCEL";
    /// The agent's open listeners: `u32` slot ([`listener_slot`]) → listening socket.
    /// The kernel drops a socket from the map when it closes, so a killed agent stops
    /// being steered to at once, before its heartbeat goes stale.
    pub const LISTENERS: &str = "SK_LISTENERS";
    /// Per-CPU `u64` counters indexed by [`Counter`](crate::Counter).
    pub const COUNTERS: &str = "SK_COUNTERS";
}

/// Default capacity of each map; the agent's config (`capacity`) may change most of
/// them at load time. Steering state is short-lived (connect → accept), so the
/// original-destination maps are LRU and sized for bursts of new connections.
pub mod map_sizes {
    /// Service VIP:port pairs, as Cilium's default service map.
    pub const VIPS: u32 = 65536;
    /// Network namespaces (Pods) on the node.
    pub const ENROLLED: u32 = 4096;
    /// Connects between `connect()` and the agent's `accept()`, each of the two maps.
    pub const ORIG_DST: u32 = 65536;
    /// Two entries per accelerated connection.
    pub const SOCKS: u32 = 65536;
    pub const NO_ACCEL: u32 = 4096;
    pub const LISTENERS: u32 = 2;
}

/// Values of the enrolled-namespaces map.
pub mod enrolled {
    /// Steer this namespace's connects to service VIPs.
    pub const STEER: u8 = 1;
    /// The namespace is at its connection cap: its connects take kube-proxy's path.
    pub const FULL: u8 = 2;
}

/// Slots of the listeners map.
pub mod listener_slot {
    pub const V4: u32 = 0;
    pub const V6: u32 = 1;
}

// The kernel and userspace must agree on these layouts byte for byte.
const _: () = assert!(core::mem::size_of::<SockAddr>() == 20);
const _: () = assert!(core::mem::size_of::<FourTuple>() == 40);
const _: () = assert!(core::mem::size_of::<OrigDst>() == 32);
const _: () = assert!(core::mem::size_of::<AgentState>() == 64);
