//! sockops: when a steered connection is established, file its original destination
//! under the connection's 4-tuple, where the agent finds it after `accept`; with
//! acceleration on, put both ends of the Pod↔agent connection in the socket map.
//! For connects sent straight to an endpoint (kernel mode), count whether they were
//! established or failed; forget every rewritten connect when its socket closes.

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE, BPF_TCP_SYN_SENT,
    },
    helpers::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};
use proxy_common::{Counter, FourTuple, SockAddr, addr::AF_INET, addr::port, lb::Rewrite};

use crate::maps::{
    AGENT, ConnectEvent, LB_FAILURES, NO_ACCEL, ORIG_BY_COOKIE, ORIG_BY_TUPLE, REWRITES, SOCKS,
    count, count_connect,
};

#[sock_ops]
pub fn sk_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        // A Pod's connect leaves: if it was rewritten, hear of the socket's close.
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            // SAFETY: map values are plain data.
            if unsafe { REWRITES.get(&cookie(&ctx)) }.is_some() {
                let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
            }
        }
        // The Pod's end: its connect was steered to the agent, or sent straight to an
        // endpoint.
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => match file_orig_dst(&ctx) {
            Ok(true) => {
                count(Counter::OrigDstFiled);
                if accelerate(&ctx, tuple(&ctx)) {
                    // Only the Pod's end can fall back (see sk_msg.rs); hear of its
                    // close to forget that.
                    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
                }
            }
            Ok(false) => {
                // SAFETY: map values are plain data.
                if let Some(rewrite) = unsafe { REWRITES.get(&cookie(&ctx)) } {
                    let _ = count_connect(rewrite, ConnectEvent::Established);
                }
            }
            Err(why) => count(why),
        },
        // The agent's end: accepted on its listener.
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            let own = tuple(&ctx);
            if AGENT.get(0).is_some_and(|agent| agent.is_listener(&own.src)) {
                accelerate(&ctx, own);
            }
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => {
            let _ = NO_ACCEL.remove(&tuple(&ctx));
            forget_rewrite(&ctx, ctx.arg(0) == BPF_TCP_SYN_SENT);
        }
        _ => {}
    }
    1
}

/// Forgets a closed socket's rewritten connect. One sent straight to an endpoint that
/// closes before it was ever established (`never_connected`: refused, reset, given up)
/// counts as failed, and the agent hears of it at once, for outlier detection.
#[inline(always)]
fn forget_rewrite(ctx: &SockOpsContext, never_connected: bool) {
    let cookie = cookie(ctx);
    if never_connected
        // SAFETY: map values are plain data.
        && let Some(rewrite) = unsafe { REWRITES.get(&cookie) }
        && count_connect(rewrite, ConnectEvent::Failed)
        && LB_FAILURES.output::<Rewrite>(rewrite, 0).is_err()
    {
        count(Counter::LbFailureUnreported);
    }
    let _ = REWRITES.remove(&cookie);
}

#[inline(always)]
fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: the helper takes the context pointer of a sock_ops program.
    unsafe { bpf_get_socket_cookie(ctx.ops.cast()) }
}

/// Moves a steered socket's original destination from its cookie to its 4-tuple.
/// Returns `Ok(false)` for connections that were not steered.
fn file_orig_dst(ctx: &SockOpsContext) -> Result<bool, Counter> {
    let cookie = cookie(ctx);
    // SAFETY: map values are plain data.
    let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }).copied() else {
        return Ok(false);
    };
    let _ = ORIG_BY_COOKIE.remove(&cookie);
    ORIG_BY_TUPLE.insert(&tuple(ctx), &orig, 0).map_err(|_| Counter::OrigDstFileFailed)?;
    Ok(true)
}

/// Puts this socket in the socket map under its own local → remote tuple, when the
/// agent turned acceleration on; returns whether it did. It leaves the map by itself
/// when it closes.
#[inline(always)]
fn accelerate(ctx: &SockOpsContext, mut own: FourTuple) -> bool {
    if !AGENT.get(0).is_some_and(|agent| agent.accel()) {
        return false;
    }
    // SAFETY: `ops` is the context pointer the kernel passed to this program.
    let ops = unsafe { &mut *ctx.ops };
    let inserted = SOCKS.update(&mut own, ops, u64::from(BPF_ANY)).is_ok();
    count(if inserted { Counter::AccelInserted } else { Counter::AccelInsertFailed });
    inserted
}

/// This socket's local → remote addresses.
#[inline(always)]
fn tuple(ctx: &SockOpsContext) -> FourTuple {
    let (local_port, remote_port) = (
        port::from_sock_ops_local(ctx.local_port()),
        port::from_sock_ops_remote(ctx.remote_port()),
    );
    if ctx.family() == u32::from(AF_INET) {
        FourTuple {
            src: SockAddr::v4(ctx.local_ip4(), local_port),
            dst: SockAddr::v4(ctx.remote_ip4(), remote_port),
        }
    } else {
        FourTuple {
            src: SockAddr::v6(ctx.local_ip6(), local_port),
            dst: SockAddr::v6(ctx.remote_ip6(), remote_port),
        }
    }
}
