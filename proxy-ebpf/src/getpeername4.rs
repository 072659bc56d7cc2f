//! cgroup/getpeername4: an app whose IPv4 connect to a VIP was rewritten sees the VIP
//! as its peer, not the endpoint or the agent the connect went to.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::{getpeername::dialled, sock_addr};

#[cgroup_sock_addr(getpeername4)]
pub fn sk_getpeername4(ctx: SockAddrContext) -> i32 {
    if let Some(vip) = dialled(&ctx, sock_addr::get4(ctx.sock_addr)) {
        sock_addr::set4(ctx.sock_addr, vip);
    }
    // A getpeername hook cannot fail the call.
    1
}
