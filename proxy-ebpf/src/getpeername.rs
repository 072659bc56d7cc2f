//! What getpeername4 and getpeername6 share: the VIP an app dialled, for a socket
//! whose connect the kernel rewrote (to an endpoint or to the agent).

use aya_ebpf::{helpers::bpf_get_socket_cookie, programs::SockAddrContext};
use proxy_common::{Counter, SockAddr};

use crate::maps::{REWRITES, count};

/// The VIP to show instead of `peer`, if this socket's connect to it was rewritten
/// from one. A socket that connected again elsewhere keeps its own peer.
#[inline(always)]
pub fn dialled(ctx: &SockAddrContext, peer: SockAddr) -> Option<SockAddr> {
    // SAFETY: the helper takes the context pointer of a sock_addr program.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // SAFETY: map values are plain data.
    let rewrite = unsafe { REWRITES.get(&cookie) }?;
    if rewrite.to != peer {
        return None;
    }
    count(Counter::PeerRestored);
    Some(rewrite.vip)
}
