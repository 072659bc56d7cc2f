//! Kernel mode for TCP services (`tcp_mode: kernel`): connect4/6 send a connect to a
//! service VIP straight to one of the service's Ready endpoints, so nothing sits on the
//! path. The agent writes, per service, a table of endpoint slots; the kernel takes the
//! slots in turn.
//!
//! The pick is round robin from a random start, not random: 1,000 random picks over
//! three endpoints stray more than 10% from an even share in about one run in fifteen
//! (σ ≈ 15 connects), while taking the slots in turn spreads them evenly on each node.
//! The agent starts each new table at a random slot, so nodes do not move in step.
//! Consistent hashing (Maglev) has nothing to hash at `connect()` (no source port yet)
//! and nothing to keep consistent (a connection keeps its endpoint for life).

use crate::SockAddr;

/// The value of `SK_LB_SERVICES` for a VIP in kernel mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbService {
    /// How many endpoints the live table holds (slots `0..count`); 0: none is Ready.
    pub count: u32,
    /// The live one of the service's two slot tables (0 or 1). The agent fills the
    /// other one, then switches, so a connect never sees a table half written.
    pub table: u32,
    /// The slot the next connect takes, modulo `count`. Advanced by the kernel
    /// without a lock: two CPUs at once may take the same slot, which costs only a
    /// little evenness.
    pub next: u32,
    pub reserved: u32,
}

impl LbService {
    /// Slot `index` of the live table.
    pub const fn slot(&self, vip: SockAddr, index: u32) -> BackendSlot {
        BackendSlot { vip, table: (self.table & 1) as u16, index: index as u16 }
    }
}

/// The key of `SK_LB_BACKENDS`: one slot of one of a service's two tables. The value
/// is the endpoint's address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BackendSlot {
    pub vip: SockAddr,
    pub table: u16,
    pub index: u16,
}

/// Most endpoints one table holds.
pub const MAX_BACKENDS: usize = u16::MAX as usize;

/// A connect the kernel rewrote: the address the app dialled and where the connect
/// went instead (an endpoint in kernel mode, the agent's listener in relay mode).
/// The value of `SK_REWRITES`, which getpeername reads to show the app the VIP, and
/// the key of `SK_LB_CONNECTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rewrite {
    pub vip: SockAddr,
    pub to: SockAddr,
}

/// What the kernel saw of the connects it sent to one endpoint of one service (the
/// per-CPU value of `SK_LB_CONNECTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnectStats {
    /// Connects sent to the endpoint.
    pub picked: u64,
    /// Of those, connections established.
    pub established: u64,
    /// Of those, connects that failed (refused, reset or timed out in SYN-SENT).
    pub failed: u64,
}

impl ConnectStats {
    pub fn add(&mut self, other: &ConnectStats) {
        self.picked += other.picked;
        self.established += other.established;
        self.failed += other.failed;
    }
}

/// The slot this connect to `vip` takes, advancing the service's cursor; `None` when
/// the service has no Ready endpoint.
pub fn take_slot(vip: SockAddr, service: &mut LbService) -> Option<BackendSlot> {
    if service.count == 0 {
        return None;
    }
    let index = service.next % service.count;
    service.next = service.next.wrapping_add(1);
    Some(service.slot(vip, index))
}

/// Whether a connect to `vip` may go to `backend` instead: the same family (a
/// dual-stack socket dialling an IPv4-mapped VIP counts as IPv4) and a real port.
pub fn fits(vip: &SockAddr, backend: &SockAddr) -> bool {
    backend.family == vip.family && backend.port != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::SocketAddr;

    fn addr(s: &str) -> SockAddr {
        SockAddr::from(s.parse::<SocketAddr>().unwrap())
    }

    #[test]
    fn connects_take_the_live_tables_slots_in_turn_from_the_start_given() {
        let vip = addr("10.96.0.10:7000");
        let mut service = LbService { count: 3, table: 1, next: 7, reserved: 0 };
        let mut taken = [0u32; 3];
        for _ in 0..1000 {
            let slot = take_slot(vip, &mut service).unwrap();
            assert_eq!((slot.vip, slot.table), (vip, 1));
            taken[usize::from(slot.index)] += 1;
        }
        // 1,000 connects over three endpoints: within one connect of an even share.
        assert!(taken.iter().all(|n| (333..=334).contains(n)), "{taken:?}");
        assert_eq!(service.next, 1007);
    }

    #[test]
    fn no_ready_endpoint_takes_no_slot_and_the_cursor_survives_wrapping() {
        let vip = addr("[fd96::10]:7000");
        assert_eq!(take_slot(vip, &mut LbService::default()), None);
        let mut service = LbService { count: 2, table: 0, next: u32::MAX, reserved: 0 };
        assert_eq!(take_slot(vip, &mut service).unwrap().index, (u32::MAX % 2) as u16);
        assert_eq!(take_slot(vip, &mut service).unwrap().index, 0);
        // A table number the agent never writes still names one of the two tables.
        let mut odd = LbService { count: 1, table: 7, next: 0, reserved: 0 };
        assert_eq!(take_slot(vip, &mut odd).unwrap().table, 1);
    }

    #[test]
    fn an_endpoint_fits_a_vip_of_its_own_family_only() {
        let v4 = addr("10.96.0.10:7000");
        assert!(fits(&v4, &addr("10.10.0.3:7000")));
        assert!(!fits(&v4, &addr("[fd10::3]:7000")));
        assert!(!fits(&v4, &addr("10.10.0.3:0")));
        assert!(!fits(&v4, &SockAddr::default()), "an empty slot");
        // A dual-stack socket dialling ::ffff:10.96.0.10 gets an IPv4 endpoint.
        let mapped = addr("[::ffff:10.96.0.10]:7000");
        assert!(fits(&mapped, &addr("10.10.0.3:7000")));
        assert!(fits(&addr("[fd96::10]:7000"), &addr("[fd10::3]:7000")));
    }
}
