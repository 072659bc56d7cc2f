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
pub mod lb;
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
    /// VIPs in kernel mode: `SockAddr` → [`LbService`](crate::lb::LbService).
    pub const LB_SERVICES: &str = "SK_LB_SERVICES";
    /// Their endpoint slots: [`BackendSlot`](crate::lb::BackendSlot) → `SockAddr`.
    pub const LB_BACKENDS: &str = "SK_LB_BACKENDS";
    /// What the kernel saw of the connects it sent straight to endpoints, per CPU:
    /// [`Rewrite`](crate::lb::Rewrite) (VIP, endpoint) →
    /// [`ConnectStats`](crate::lb::ConnectStats).
    pub const LB_CONNECTS: &str = "SK_LB_CONNECTS";
    /// Connects sent straight to an endpoint that failed, told to the agent as they
    /// happen (a ring buffer of [`Rewrite`](crate::lb::Rewrite)s; not pinned, each
    /// agent has its own).
    pub const LB_FAILURES: &str = "SK_LB_FAILURES";
    /// Connects rewritten (to an endpoint or to the agent), for getpeername: `u64`
    /// socket cookie → [`Rewrite`](crate::lb::Rewrite). Removed when the socket closes.
    pub const REWRITES: &str = "SK_REWRITES";
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
    /// Two tables per service: 32,768 endpoints in kernel mode on one node.
    pub const LB_BACKENDS: u32 = 65536;
    pub const LB_CONNECTS: u32 = 16384;
    /// Bytes of the failed-connect ring buffer: 341 failures not yet read.
    pub const LB_FAILURES: u32 = 16384;
    /// One entry per open steered or rewritten connection (LRU beyond).
    pub const REWRITES: u32 = 131072;
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
const _: () = assert!(core::mem::size_of::<lb::LbService>() == 16);
const _: () = assert!(core::mem::size_of::<lb::BackendSlot>() == 24);
const _: () = assert!(core::mem::size_of::<lb::Rewrite>() == 40);
const _: () = assert!(core::mem::size_of::<lb::ConnectStats>() == 24);
