//! Why the kernel programs did what they did: one per-CPU counter per outcome.

/// Index into the `SK_COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A connect to a service VIP was rewritten to the agent.
    Steered = 0,
    /// Not steered: the socket's network namespace is not enrolled.
    SkipNotEnrolled,
    /// Not steered: the destination is not a known service VIP.
    SkipNotVip,
    /// Not steered: the agent is gone, its listener socket closed (fail open).
    SkipAgentDead,
    /// Not steered: the agent has no listener of the destination's family.
    SkipNoListener,
    /// Not steered: not a TCP socket.
    SkipNotTcp,
    /// Not steered: the original destination could not be recorded (map full).
    SkipMapFull,
    /// sockops filed a steered connection's original destination under its 4-tuple.
    OrigDstFiled,
    /// sockops could not file an original destination (map update failed).
    OrigDstFileFailed,
    /// sockops put one end of a Pod↔agent connection in the socket map.
    AccelInserted,
    /// sockops could not put a Pod↔agent socket in the socket map.
    AccelInsertFailed,
    /// sk_msg moved a message straight to the peer socket.
    AccelRedirected,
    /// sk_msg found no peer socket (its handshake had not finished on the agent's
    /// side), so the connection's messages take the TCP stack from then on.
    AccelFallback,
    /// Not steered: the agent's listener is open but its heartbeat is stale, so it
    /// hangs (fail open).
    SkipAgentStale,
    /// Not steered: the agent is at its connection cap or out of descriptors
    /// (overload fails open).
    SkipAgentFull,
    /// Not steered: the socket's Pod (network namespace) is at its connection cap.
    SkipPodFull,
    /// Kernel mode: a connect to a VIP went straight to one of its Ready endpoints.
    LbPicked,
    /// Kernel mode, but the kernel's table holds no Ready endpoint: steered to the
    /// agent instead (which has none either, unless it learned of one since).
    LbNoBackend,
    /// Kernel mode, but the slot taken was empty (its table was being rewritten) or
    /// held an address of another family: steered to the agent instead.
    LbSlotMissing,
    /// A rewritten connect could not be recorded for getpeername (map update failed):
    /// the app sees where the connect really went.
    RewriteNotRecorded,
    /// getpeername showed an app the VIP it dialled instead of the address the kernel
    /// sent its connect to.
    PeerRestored,
    /// Kernel mode: a failed connect could not be told to the agent at once (its ring
    /// buffer was full); it is still counted per endpoint.
    LbFailureUnreported,
}

impl Counter {
    pub const ALL: [Counter; 22] = [
        Counter::Steered,
        Counter::SkipNotEnrolled,
        Counter::SkipNotVip,
        Counter::SkipAgentDead,
        Counter::SkipNoListener,
        Counter::SkipNotTcp,
        Counter::SkipMapFull,
        Counter::OrigDstFiled,
        Counter::OrigDstFileFailed,
        Counter::AccelInserted,
        Counter::AccelInsertFailed,
        Counter::AccelRedirected,
        Counter::AccelFallback,
        Counter::SkipAgentStale,
        Counter::SkipAgentFull,
        Counter::SkipPodFull,
        Counter::LbPicked,
        Counter::LbNoBackend,
        Counter::LbSlotMissing,
        Counter::RewriteNotRecorded,
        Counter::PeerRestored,
        Counter::LbFailureUnreported,
    ];
    /// Size of the counters array; leaves room for counters added later.
    pub const SLOTS: u32 = 32;

    /// A stable snake_case name for metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Steered => "steered",
            Counter::SkipNotEnrolled => "skip_not_enrolled",
            Counter::SkipNotVip => "skip_not_vip",
            Counter::SkipAgentDead => "skip_agent_dead",
            Counter::SkipNoListener => "skip_no_listener",
            Counter::SkipNotTcp => "skip_not_tcp",
            Counter::SkipMapFull => "skip_map_full",
            Counter::OrigDstFiled => "orig_dst_filed",
            Counter::OrigDstFileFailed => "orig_dst_file_failed",
            Counter::AccelInserted => "accel_inserted",
            Counter::AccelInsertFailed => "accel_insert_failed",
            Counter::AccelRedirected => "accel_redirected",
            Counter::AccelFallback => "accel_fallback",
            Counter::SkipAgentStale => "skip_agent_stale",
            Counter::SkipAgentFull => "skip_agent_full",
            Counter::SkipPodFull => "skip_pod_full",
            Counter::LbPicked => "lb_picked",
            Counter::LbNoBackend => "lb_no_backend",
            Counter::LbSlotMissing => "lb_slot_missing",
            Counter::RewriteNotRecorded => "rewrite_not_recorded",
            Counter::PeerRestored => "peer_restored",
            Counter::LbFailureUnreported => "lb_failure_unreported",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_a_distinct_slot_and_name() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?} is listed out of order");
            assert!((*c as u32) < Counter::SLOTS);
            for other in &Counter::ALL[i + 1..] {
                assert_ne!(c.name(), other.name());
            }
        }
    }
}
