//! What the kernel knows about the agent: where it listens and whether it is alive.

use crate::SockAddr;

/// How often the agent refreshes its heartbeat.
pub const HEARTBEAT_INTERVAL_MS: u64 = 200;
/// A heartbeat older than this means the agent is gone: connects are left alone.
pub const HEARTBEAT_MAX_AGE_NS: u64 = 1_000_000_000;

/// The single value of the `SK_AGENT` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AgentState {
    /// `CLOCK_MONOTONIC` nanoseconds (the kernel's `bpf_ktime_get_ns`) of the last beat.
    pub heartbeat_ns: u64,
    pub max_age_ns: u64,
    /// The IPv4 listener; `family == 0` when there is none.
    pub listen4: SockAddr,
    /// The IPv6 listener; `family == 0` when there is none.
    pub listen6: SockAddr,
    /// [`AgentState::ACCEL`] when Pod↔agent connections go in the socket map.
    pub flags: u32,
    pub reserved: u32,
}

impl AgentState {
    /// sockops puts Pod↔agent sockets in the socket map, where sk_msg moves their
    /// bytes socket to socket.
    pub const ACCEL: u32 = 1;
    /// The agent cannot take more connections (its cap, or out of descriptors): new
    /// connects take kube-proxy's path until it clears this.
    pub const FULL: u32 = 2;

    pub const fn accel(&self) -> bool {
        self.flags & Self::ACCEL != 0
    }

    pub const fn full(&self) -> bool {
        self.flags & Self::FULL != 0
    }

    /// Whether `addr` is one of the agent's listeners.
    pub fn is_listener(&self, addr: &SockAddr) -> bool {
        (self.listen4.family != 0 && self.listen4 == *addr)
            || (self.listen6.family != 0 && self.listen6 == *addr)
    }

    /// True when the last heartbeat is recent enough. A heartbeat from the future
    /// (clock read races between CPUs) counts as fresh.
    pub const fn is_alive(&self, now_ns: u64) -> bool {
        self.heartbeat_ns != 0 && now_ns.saturating_sub(self.heartbeat_ns) <= self.max_age_ns
    }
}
