//! sockeye's kernel programs. One program per file; each entry point is a few lines
//! that call one fallible function and count the outcome. Socket hooks always let the
//! syscall proceed (fail open): the worst they do is leave a connect untouched.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod connect;
#[cfg(target_arch = "bpf")]
mod connect4;
#[cfg(target_arch = "bpf")]
mod connect6;
#[cfg(target_arch = "bpf")]
mod getpeername;
#[cfg(target_arch = "bpf")]
mod getpeername4;
#[cfg(target_arch = "bpf")]
mod getpeername6;
#[cfg(target_arch = "bpf")]
mod lb;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod sk_msg;
#[cfg(target_arch = "bpf")]
mod sock_addr;
#[cfg(target_arch = "bpf")]
mod sockops;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic.
    unsafe { core::hint::unreachable_unchecked() }
}

/// On the host this crate is an empty binary: the real build is for `bpfel-unknown-none`.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
