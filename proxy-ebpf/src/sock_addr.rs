//! The address in a sock_addr program's context: the destination of a connect, the
//! peer a getpeername returns. Read and written in the 4-byte loads and stores the
//! verifier allows.

use aya_ebpf::bindings::bpf_sock_addr;
use proxy_common::{SockAddr, addr::port};

/// The IPv4 address and port.
#[inline(always)]
pub fn get4(sa: *mut bpf_sock_addr) -> SockAddr {
    // SAFETY: `sa` is the program's context pointer; 4-byte reads of user_ip4 and
    // user_port are allowed.
    unsafe { SockAddr::v4((*sa).user_ip4, port::from_sock_addr((*sa).user_port)) }
}

/// Writes `addr` (IPv4) into the context.
#[inline(always)]
pub fn set4(sa: *mut bpf_sock_addr, addr: SockAddr) {
    // SAFETY: `sa` is the program's context pointer; 4-byte writes are allowed.
    unsafe { core::ptr::write_volatile(&raw mut (*sa).user_ip4, addr.ip[0]) };
    set_port(sa, addr.port);
}

/// The IPv6 address and port; an IPv4-mapped address reads as IPv4.
#[inline(always)]
pub fn get6(sa: *mut bpf_sock_addr) -> SockAddr {
    let mut ip = [0u32; 4];
    for (i, word) in ip.iter_mut().enumerate() {
        // SAFETY: `sa` is the program's context pointer; 4-byte reads of user_ip6 are allowed.
        *word = unsafe { core::ptr::read_volatile(&raw const (*sa).user_ip6[i]) };
    }
    // SAFETY: as above, for user_port.
    SockAddr::v6(ip, port::from_sock_addr(unsafe { (*sa).user_port }))
}

/// Writes `addr` into the context of an IPv6 socket (an IPv4 address mapped).
#[inline(always)]
pub fn set6(sa: *mut bpf_sock_addr, addr: SockAddr) {
    for (i, word) in addr.ip6_words().into_iter().enumerate() {
        // SAFETY: `sa` is the program's context pointer; 4-byte writes are allowed.
        unsafe { core::ptr::write_volatile(&raw mut (*sa).user_ip6[i], word) };
    }
    set_port(sa, addr.port);
}

#[inline(always)]
fn set_port(sa: *mut bpf_sock_addr, port: u16) {
    let raw = port::to_sock_addr(port);
    // SAFETY: `sa` is the program's context pointer; 4-byte writes of user_port are allowed.
    unsafe { core::ptr::write_volatile(&raw mut (*sa).user_port, raw) };
}
