//! The agent's only `unsafe` code: thin wrappers over syscalls std does not cover.
#![allow(unsafe_code)]

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use tokio::io::{Interest, unix::AsyncFd};

/// `SO_NETNS_COOKIE` (Linux 5.14+), not yet in every libc release.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Moves the calling thread into the network namespace `ns`.
pub fn enter_netns(ns: &File) -> io::Result<()> {
    // SAFETY: `ns` is an open file; setns checks it is a network namespace and only
    // changes the calling thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The cookie of the calling thread's network namespace, through a throwaway socket.
pub fn own_netns_cookie() -> io::Result<u64> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` outlive the call and `len` is `cookie`'s size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the kernel's `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Registers the kernel logs' ring buffer (`aya_log::EbpfLogger`) with tokio, to wait
/// until it has records.
pub fn readable_fd<T: AsRawFd>(logger: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: callers pass an `EbpfLogger`, which owns its ring buffer's descriptor for
    // its whole life and always returns that same descriptor from `as_raw_fd`.
    unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }.map_err(io::Error::from)
}

/// A netlink socket speaking `NETLINK_SOCK_DIAG`, in the calling thread's network
/// namespace.
pub fn sock_diag_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one datagram on `fd` (to the kernel, for a netlink socket).
pub fn send(fd: &OwnedFd, message: &[u8]) -> io::Result<()> {
    // SAFETY: `message` is valid for reads of its length for the whole call.
    let sent = unsafe { libc::send(fd.as_raw_fd(), message.as_ptr().cast(), message.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one datagram into `buf`; returns its length.
pub fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length for the whole call.
    let got = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(got as usize)
}
