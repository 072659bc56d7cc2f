//! cgroup/connect6: steer an enrolled Pod's IPv6 connects to a service VIP to the agent,
//! or, for a VIP in kernel mode, straight to one of its Ready endpoints. A dual-stack
//! socket connecting to an IPv4-mapped VIP is steered to the IPv4 listener (or an IPv4
//! endpoint), mapped.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use proxy_common::Counter;

use crate::{
    connect::{finish, steer},
    sock_addr,
};

#[cgroup_sock_addr(connect6)]
pub fn sk_connect6(ctx: SockAddrContext) -> i32 {
    finish(try_connect6(&ctx))
}

fn try_connect6(ctx: &SockAddrContext) -> Result<Counter, Counter> {
    let (to, why) = steer(ctx, sock_addr::get6(ctx.sock_addr))?;
    sock_addr::set6(ctx.sock_addr, to);
    Ok(why)
}
