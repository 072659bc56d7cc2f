//! cgroup/connect4: steer an enrolled Pod's IPv4 connects to a service VIP to the agent.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use proxy_common::{Counter, SockAddr};

use crate::connect::{finish, set_user_port, steer, user_port};

#[cgroup_sock_addr(connect4)]
pub fn sk_connect4(ctx: SockAddrContext) -> i32 {
    finish(try_connect4(&ctx))
}

fn try_connect4(ctx: &SockAddrContext) -> Result<(), Counter> {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the program's context pointer; 4-byte reads of user_ip4 are allowed.
    let dst = SockAddr::v4(unsafe { (*sa).user_ip4 }, user_port(sa));
    let listener = steer(ctx, dst)?;
    // SAFETY: as above, for a 4-byte write.
    unsafe { core::ptr::write_volatile(&raw mut (*sa).user_ip4, listener.ip[0]) };
    set_user_port(sa, listener.port);
    Ok(())
}
