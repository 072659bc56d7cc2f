//! sockops: when a steered connection is established, file its original destination
//! under the connection's 4-tuple, where the agent finds it after `accept`.

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, helpers::bpf_get_socket_cookie, macros::sock_ops,
    programs::SockOpsContext,
};
use proxy_common::{Counter, FourTuple, SockAddr, addr::AF_INET, addr::port};

use crate::maps::{ORIG_BY_COOKIE, ORIG_BY_TUPLE, count};

#[sock_ops]
pub fn sk_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        match file_orig_dst(&ctx) {
            Ok(true) => count(Counter::OrigDstFiled),
            Ok(false) => {}
            Err(why) => count(why),
        }
    }
    1
}

/// Moves a steered socket's original destination from its cookie to its 4-tuple.
/// Returns `Ok(false)` for connections that were not steered.
fn file_orig_dst(ctx: &SockOpsContext) -> Result<bool, Counter> {
    // SAFETY: the helper takes the context pointer of a sock_ops program.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: map values are plain data.
    let Some(dst) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }).copied() else {
        return Ok(false);
    };
    let _ = ORIG_BY_COOKIE.remove(&cookie);
    let (local_port, remote_port) = (
        port::from_sock_ops_local(ctx.local_port()),
        port::from_sock_ops_remote(ctx.remote_port()),
    );
    let tuple = if ctx.family() == u32::from(AF_INET) {
        FourTuple {
            src: SockAddr::v4(ctx.local_ip4(), local_port),
            dst: SockAddr::v4(ctx.remote_ip4(), remote_port),
        }
    } else {
        FourTuple {
            src: SockAddr::v6(ctx.local_ip6(), local_port),
            dst: SockAddr::v6(ctx.remote_ip6(), remote_port),
        }
    };
    ORIG_BY_TUPLE.insert(&tuple, &dst, 0).map_err(|_| Counter::OrigDstFileFailed)?;
    Ok(true)
}
