//! The steering decision shared by connect4 and connect6: to the agent (relay mode),
//! straight to an endpoint (kernel mode), or left alone.

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use proxy_common::{
    Counter, OrigDst, SockAddr,
    lb::Rewrite,
    listener_slot,
    steer::{Connect, decide},
};

use crate::{
    lb::{Pick, pick},
    maps::{
        AGENT, ConnectEvent, ENROLLED, ORIG_BY_COOKIE, REWRITES, VIPS, count, count_connect,
        listening,
    },
};

const IPPROTO_TCP: u32 = 6;

/// Decides where this connect goes. On `Ok` it returns the address to write into the
/// socket address (a Ready endpoint in kernel mode, else the agent's listener) and the
/// counter that says which, after recording `dst` for the agent and for getpeername.
#[inline(always)]
pub fn steer(ctx: &SockAddrContext, dst: SockAddr) -> Result<(SockAddr, Counter), Counter> {
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
        return decide(skip).map(|listener| (listener, Counter::Steered));
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
    // Kernel mode is a step of its own, taken only where the agent would be steered
    // to: with the agent gone or hung, kernel-mode VIPs fail open like the others.
    match pick(dst) {
        Pick::Endpoint(endpoint) => {
            let rewrite = Rewrite { vip: dst, to: endpoint };
            remember(cookie, &rewrite);
            let _ = count_connect(&rewrite, ConnectEvent::Picked);
            debug!(ctx, "kernel mode cookie={} netns={} port={}", cookie, netns, endpoint.port);
            return Ok((endpoint, Counter::LbPicked));
        }
        Pick::Fallback(why) => count(why),
        Pick::Relay => {}
    }
    let orig = OrigDst { dst, reserved: 0, netns };
    ORIG_BY_COOKIE.insert(&cookie, &orig, 0).map_err(|_| Counter::SkipMapFull)?;
    remember(cookie, &Rewrite { vip: dst, to: listener });
    debug!(ctx, "steer cookie={} netns={} port={}", cookie, netns, dst.port);
    Ok((listener, Counter::Steered))
}

/// Records where a connect went instead of the VIP, for getpeername; the entry goes
/// when the socket closes (sockops).
#[inline(always)]
fn remember(cookie: u64, rewrite: &Rewrite) {
    if REWRITES.insert(&cookie, rewrite, 0).is_err() {
        count(Counter::RewriteNotRecorded);
    }
}

/// Counts the outcome. A connect hook must return 1 ("proceed") whatever happened.
#[inline(always)]
pub fn finish(outcome: Result<Counter, Counter>) -> i32 {
    count(outcome.unwrap_or_else(|why| why));
    1
}
