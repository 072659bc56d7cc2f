//! Kernel mode for TCP services: the endpoint a connect to a VIP goes to, picked from
//! the service's slot table (see `proxy_common::lb`).

use proxy_common::{
    Counter, SockAddr,
    lb::{fits, take_slot},
};

use crate::maps::{LB_BACKENDS, LB_SERVICES};

/// What kernel mode says of a connect to `vip`.
pub enum Pick {
    /// The VIP is not in kernel mode: the agent relays it.
    Relay,
    /// Kernel mode, but no endpoint could be picked (why): the agent relays it.
    Fallback(Counter),
    /// Kernel mode: straight to this endpoint.
    Endpoint(SockAddr),
}

#[inline(always)]
pub fn pick(vip: SockAddr) -> Pick {
    let Some(service) = LB_SERVICES.get_ptr_mut(vip) else {
        return Pick::Relay;
    };
    // SAFETY: the map is not preallocated, so the entry stays this service's while
    // this program runs; a concurrent cursor update only repeats a slot.
    let Some(slot) = take_slot(vip, unsafe { &mut *service }) else {
        return Pick::Fallback(Counter::LbNoBackend);
    };
    // SAFETY: map values are plain data.
    match unsafe { LB_BACKENDS.get(slot) } {
        Some(endpoint) if fits(&vip, endpoint) => Pick::Endpoint(*endpoint),
        _ => Pick::Fallback(Counter::LbSlotMissing),
    }
}
