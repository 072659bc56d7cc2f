//! cgroup/connect6: steer an enrolled Pod's IPv6 connects to a service VIP to the agent.
//! A dual-stack socket connecting to an IPv4-mapped VIP is steered to the IPv4 listener.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use proxy_common::{Counter, SockAddr};

use crate::connect::{finish, set_user_port, steer, user_port};

#[cgroup_sock_addr(connect6)]
pub fn sk_connect6(ctx: SockAddrContext) -> i32 {
    finish(try_connect6(&ctx))
}

fn try_connect6(ctx: &SockAddrContext) -> Result<(), Counter> {
    let sa = ctx.sock_addr;
    let mut ip = [0u32; 4];
    for (i, word) in ip.iter_mut().enumerate() {
        // SAFETY: `sa` is the program's context pointer; 4-byte reads of user_ip6 are allowed.
        *word = unsafe { core::ptr::read_volatile(&raw const (*sa).user_ip6[i]) };
    }
    let listener = steer(ctx, SockAddr::v6(ip, user_port(sa)))?;
    for (i, word) in listener.ip6_words().into_iter().enumerate() {
        // SAFETY: as above, for 4-byte writes.
        unsafe { core::ptr::write_volatile(&raw mut (*sa).user_ip6[i], word) };
    }
    set_user_port(sa, listener.port);
    Ok(())
}
