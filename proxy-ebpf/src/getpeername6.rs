//! cgroup/getpeername6: an app whose IPv6 connect to a VIP was rewritten sees the VIP
//! as its peer (an IPv4-mapped VIP comes back mapped).

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::{getpeername::dialled, sock_addr};

#[cgroup_sock_addr(getpeername6)]
pub fn sk_getpeername6(ctx: SockAddrContext) -> i32 {
    if let Some(vip) = dialled(&ctx, sock_addr::get6(ctx.sock_addr)) {
        sock_addr::set6(ctx.sock_addr, vip);
    }
    // A getpeername hook cannot fail the call.
    1
}
