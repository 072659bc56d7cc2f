//! cgroup/connect4: steer an enrolled Pod's IPv4 connects to a service VIP to the agent,
//! or, for a VIP in kernel mode, straight to one of its Ready endpoints.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use proxy_common::Counter;

use crate::{
    connect::{finish, steer},
    sock_addr,
};

#[cgroup_sock_addr(connect4)]
pub fn sk_connect4(ctx: SockAddrContext) -> i32 {
    finish(try_connect4(&ctx))
}

fn try_connect4(ctx: &SockAddrContext) -> Result<Counter, Counter> {
    let (to, why) = steer(ctx, sock_addr::get4(ctx.sock_addr))?;
    sock_addr::set4(ctx.sock_addr, to);
    Ok(why)
}
