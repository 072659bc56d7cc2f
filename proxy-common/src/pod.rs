//! `aya::Pod` for the shared map types, so userspace can read and write them.
#![allow(unsafe_code)]

use crate::{
    AgentState, FourTuple, OrigDst, SockAddr,
    lb::{BackendSlot, ConnectStats, LbService, Rewrite},
};

// SAFETY: `#[repr(C)]`, only integer fields, no implicit padding (4×u32 + 2×u16).
unsafe impl aya::Pod for SockAddr {}
// SAFETY: `#[repr(C)]` pair of `SockAddr`s, no padding between them.
unsafe impl aya::Pod for FourTuple {}
// SAFETY: `#[repr(C)]`, 2×u64 followed by two 20-byte `SockAddr`s: no padding.
unsafe impl aya::Pod for AgentState {}
// SAFETY: `#[repr(C)]`, a 20-byte `SockAddr`, a u32 and a u64 at offset 24: no padding.
unsafe impl aya::Pod for OrigDst {}
// SAFETY: `#[repr(C)]`, four `u32`s.
unsafe impl aya::Pod for LbService {}
// SAFETY: `#[repr(C)]`, a 20-byte `SockAddr` and two `u16`s: no padding.
unsafe impl aya::Pod for BackendSlot {}
// SAFETY: `#[repr(C)]` pair of `SockAddr`s, no padding between them.
unsafe impl aya::Pod for Rewrite {}
// SAFETY: `#[repr(C)]`, three `u64`s.
unsafe impl aya::Pod for ConnectStats {}
