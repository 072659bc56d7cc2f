//! The sandbox's only `unsafe` code: entering namespaces and cgroups.
#![allow(unsafe_code)]

use std::{
    fs::File,
    io::{self, Write as _},
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

/// Moves the calling thread into the network namespace `ns`.
pub fn enter_netns(ns: &File) -> io::Result<()> {
    // SAFETY: `ns` is an open file; setns checks it and only changes this thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `command`'s child enter `netns` and join the cgroup whose `cgroup.procs` is
/// open as `procs`, before it executes.
pub fn spawn_inside(command: &mut Command, netns: File, procs: Option<File>) {
    let hook = move || {
        if let Some(procs) = &procs {
            // "0" means the writing process itself.
            (&*procs).write_all(b"0")?;
        }
        enter_netns(&netns)
    };
    // SAFETY: the hook runs between fork and exec and only makes the write(2) and
    // setns(2) system calls on descriptors opened before the fork; it allocates nothing.
    unsafe { command.pre_exec(hook) };
}

/// Lets `backlog` connections wait for `accept` (std listens with 128), so a burst of
/// connects is not met with dropped SYNs and their 1 s retransmits.
pub fn deepen_backlog(listener: &std::net::TcpListener, backlog: i32) -> io::Result<()> {
    // SAFETY: listen(2) on a descriptor the listener owns; calling it again on a
    // listening socket only changes its backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` to `pid`.
pub fn kill(pid: u32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a process with this id exists.
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    exists || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on, SIGINT (Ctrl-C) only sets a flag that [`interrupted`] reads, so the
/// caller can stop and let its guards tear the sandbox down.
pub fn catch_interrupt() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, note_interrupt as *const () as libc::sighandler_t) };
}

/// Whether SIGINT arrived since [`catch_interrupt`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// `CLOCK_MONOTONIC` in nanoseconds: comparable across processes on this machine (and
/// with the kernel's `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Clock ticks per second, the unit of CPU times in `/proc/<pid>/stat`.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf(3) has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// Raises the soft open-file limit to the hard one (a Pod holding thousands of
/// connections needs it).
pub fn raise_nofile_limit() -> io::Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `limit` is a valid rlimit; raising the soft limit to the hard one is allowed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
