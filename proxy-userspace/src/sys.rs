//! The agent's only `unsafe` code: thin wrappers over syscalls std does not cover.
#![allow(unsafe_code)]

use std::{
    fs::File,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
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

/// The filesystem type (`statfs`'s `f_type` magic number) of the filesystem `path` is on.
pub fn fs_type(path: &std::path::Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    // SAFETY: an all-zero statfs is valid for the kernel to fill.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` outlives the call.
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type as i64)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the kernel's `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Registers a kernel ring buffer (`aya_log::EbpfLogger`, `aya::maps::RingBuf`) with
/// tokio, to wait until it has records.
pub fn readable_fd<T: AsRawFd>(ring: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: callers pass an `EbpfLogger` or a `RingBuf`, each of which owns its ring
    // buffer's descriptor for its whole life and always returns that same descriptor
    // from `as_raw_fd`.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(io::Error::from)
}

/// A message of one buffer, `iov`, and the control buffer `control`; it points into
/// both, so they must outlive its use.
fn message(iov: &mut libc::iovec, control: &mut [u8]) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    msg
}

/// Sends `fds` over the unix stream socket `stream` (SCM_RIGHTS), with one byte of
/// data.
pub fn send_fds(stream: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let payload_len = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload_len as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut byte = [fds.len() as u8];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let msg = message(&mut iov, &mut control);
    // SAFETY: `msg` has a control buffer of CMSG_SPACE(payload_len) bytes, so the first
    // header and `payload_len` bytes of data after it fit.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload_len as u32) as usize;
        std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(cmsg).cast(), raw.len());
    }
    // SAFETY: `msg` points at buffers that live until the call returns.
    if unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives the descriptors [`send_fds`] sent, at most `max`.
pub fn recv_fds(stream: &UnixStream, max: usize) -> io::Result<Vec<OwnedFd>> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((max * size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut byte = [0u8];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut msg = message(&mut iov, &mut control);
    // SAFETY: `msg` points at buffers that live until the call returns.
    let got = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    if got == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before sending"));
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` and set `msg_controllen`; the CMSG macros walk
    // only within it, and SCM_RIGHTS data is an array of descriptors now ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data_len = (*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..data_len / size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("more descriptors sent than expected"));
    }
    Ok(fds)
}

/// The user id of the process at the other end of the unix socket `stream`
/// (SO_PEERCRED).
pub fn peer_uid(stream: BorrowedFd<'_>) -> io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` outlive the call and `len` is `cred`'s size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// This process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Gives the calling thread (not the process) the lowest real-time priority
/// (SCHED_FIFO 1), else the highest nice value; both need CAP_SYS_NICE. The error is
/// the real-time one's.
pub fn realtime_priority() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: `param` is a valid sched_param; pid 0 is the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    // SAFETY: plain setpriority(2); on Linux who 0 with PRIO_PROCESS is the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -20) } == 0 {
        return Ok(());
    }
    Err(err)
}

/// Raises the limit on open files as far as allowed: both limits to `want` with
/// CAP_SYS_RESOURCE, else the soft limit to the hard one. Returns the new soft limit.
pub fn raise_nofile_limit(want: u64) -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let raised =
        libc::rlimit { rlim_cur: want.max(limit.rlim_cur), rlim_max: want.max(limit.rlim_max) };
    // SAFETY: `raised` is a valid rlimit; the kernel refuses what is not allowed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(raised.rlim_cur);
    }
    let soft = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
    // SAFETY: as above; raising the soft limit to the hard one is always allowed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(soft.rlim_cur)
}

/// Gives the memory the allocator holds but no longer uses back to the system, after
/// a big first state (parsing it left its scratch space free but resident).
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own heap; it takes no pointer from us.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, os::fd::AsFd};

    use super::*;

    #[test]
    fn listening_sockets_sent_over_a_unix_socket_arrive_as_the_same_sockets() {
        let (sender, receiver) = UnixStream::pair().unwrap();
        let listeners: Vec<TcpListener> =
            (0..2).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(AsFd::as_fd).collect();
        send_fds(sender.as_fd(), &fds).unwrap();

        let got = recv_fds(&receiver, 4).unwrap();
        let addrs =
            |ls: &[TcpListener]| ls.iter().map(|l| l.local_addr().unwrap()).collect::<Vec<_>>();
        let received: Vec<TcpListener> = got.into_iter().map(TcpListener::from).collect();
        assert_eq!(addrs(&received), addrs(&listeners));
        // The same socket, not a copy: a connect is accepted through the received one.
        let _client = std::net::TcpStream::connect(listeners[1].local_addr().unwrap()).unwrap();
        received[1].accept().unwrap();
    }
}
