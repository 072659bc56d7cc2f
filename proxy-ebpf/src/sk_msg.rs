//! sk_msg: a message sent on one end of an accelerated Pod↔agent connection goes
//! straight into the other end's receive queue, skipping the TCP/IP stack.

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, sk_action::SK_PASS},
    macros::sk_msg,
    programs::SkMsgContext,
};
use proxy_common::{Counter, FourTuple, SockAddr, addr::AF_INET, addr::port};

use crate::maps::{NO_ACCEL, SOCKS, count};

#[sk_msg]
pub fn sk_msg_redirect(ctx: SkMsgContext) -> u32 {
    if let Some(outcome) = redirect(&ctx) {
        count(outcome);
    }
    // Passing is always right: with a redirect set the message goes to the peer,
    // without one it takes the TCP stack.
    SK_PASS
}

/// Redirects the message to the peer socket, unless this connection fell back.
///
/// A Pod can send before the agent's side of the handshake completes, when the
/// agent's socket is not in the map yet. That message takes the TCP stack; if later
/// ones were redirected they could overtake it, so the connection stays on TCP.
#[inline(always)]
fn redirect(ctx: &SkMsgContext) -> Option<Counter> {
    let own = tuple(ctx);
    // SAFETY: map values are plain data.
    if unsafe { NO_ACCEL.get(&own) }.is_some() {
        return None;
    }
    let mut peer = FourTuple { src: own.dst, dst: own.src };
    if SOCKS.redirect_msg(ctx, &mut peer, u64::from(BPF_F_INGRESS)) == i64::from(SK_PASS) {
        return Some(Counter::AccelRedirected);
    }
    let _ = NO_ACCEL.insert(&own, &1, 0);
    Some(Counter::AccelFallback)
}

/// This socket's local → remote addresses, as sockops filed it.
#[inline(always)]
fn tuple(ctx: &SkMsgContext) -> FourTuple {
    // SAFETY: `msg` is the context pointer the kernel passed to this program.
    let md = unsafe { &*ctx.msg };
    let (local_port, remote_port) =
        (port::from_sock_ops_local(md.local_port), port::from_sock_ops_remote(md.remote_port));
    if md.family == u32::from(AF_INET) {
        FourTuple {
            src: SockAddr::v4(md.local_ip4, local_port),
            dst: SockAddr::v4(md.remote_ip4, remote_port),
        }
    } else {
        FourTuple {
            src: SockAddr::v6(md.local_ip6, local_port),
            dst: SockAddr::v6(md.remote_ip6, remote_port),
        }
    }
}
