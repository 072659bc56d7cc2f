//! The steering decision shared by connect4 and connect6.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use proxy_common::{
    Counter, OrigDst, SockAddr, listener_slot,
    steer::{Connect, decide},
};

use crate::maps::{AGENT, ENROLLED, ORIG_BY_COOKIE, VIPS, count, listening};

const IPPROTO_TCP: u32 = 6;

/// Decides whether this connect goes to the agent. On `Ok` it returns the listener to
/// write into the socket address, after recording `dst` under the socket's cookie.
#[inline(always)]
pub fn steer(ctx: &SockAddrContext, dst: SockAddr) -> Result<SockAddr, Counter> {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the context pointer the kernel passed to this program.
    let is_tcp = unsafe { (*sa).protocol } == IPPROTO_TCP;
    // SAFETY: map values are plain data; a concurrent update can only change a byte.
    let is_vip = unsafe { VIPS.get(&dst) }.is_some();
    // Only look further for TCP connects to a VIP: most connects stop here.
    if !is_tcp || !is_vip {
        let skip = Connect {
            is_tcp,
            is_vip,
            enrolled: None,
            agent: None,
            listening: false,
            now_ns: 0,
            dst,
        };
        return decide(skip);
    }
    // SAFETY: the helper takes the context pointer of a sock_addr program.
    let netns = unsafe { bpf_get_netns_cookie(sa.cast()) };
    // SAFETY: as above.
    let enrolled = unsafe { ENROLLED.get(&netns) }.copied();
    let listener = decide(Connect {
        is_tcp,
        is_vip,
        enrolled,
        agent: AGENT.get(0),
        listening: listening(if dst.is_v4() { listener_slot::V4 } else { listener_slot::V6 }),
        // SAFETY: no preconditions.
        now_ns: unsafe { bpf_ktime_get_ns() },
        dst,
    })?;
    // SAFETY: the helper takes the context pointer of a sock_addr program.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let orig = OrigDst { dst, reserved: 0, netns };
    ORIG_BY_COOKIE.insert(&cookie, &orig, 0).map_err(|_| Counter::SkipMapFull)?;
    debug!(ctx, "steer cookie={} netns={} port={}", cookie, netns, dst.port);
    Ok(listener)
}

/// Counts the outcome. A connect hook must return 1 ("proceed") whatever happened.
#[inline(always)]
pub fn finish(outcome: Result<(), Counter>) -> i32 {
    count(match outcome {
        Ok(()) => Counter::Steered,
        Err(why) => why,
    });
    1
}

/// Reads the destination port of a connect in host order.
#[inline(always)]
pub fn user_port(sa: *mut bpf_sock_addr) -> u16 {
    // SAFETY: `sa` is the program's context pointer; 4-byte reads of user_port are allowed.
    proxy_common::addr::port::from_sock_addr(unsafe { (*sa).user_port })
}

/// Rewrites the destination port.
#[inline(always)]
pub fn set_user_port(sa: *mut bpf_sock_addr, port: u16) {
    let raw = proxy_common::addr::port::to_sock_addr(port);
    // SAFETY: `sa` is the program's context pointer; 4-byte writes of user_port are allowed.
    unsafe { core::ptr::write_volatile(&raw mut (*sa).user_port, raw) };
}
