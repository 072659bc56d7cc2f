//! Decoding original destinations and 4-tuples from raw map values (as the kernel
//! writes them): never panics, and an IPv4 or IPv6 value survives the round trip.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use proxy_common::{
    SockAddr,
    addr::{AF_INET, AF_INET6},
};

fn sock_addr(raw: &[u8; 20]) -> SockAddr {
    let word = |i: usize| u32::from_ne_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
    SockAddr {
        ip: [word(0), word(4), word(8), word(12)],
        port: u16::from_ne_bytes([raw[16], raw[17]]),
        family: u16::from_ne_bytes([raw[18], raw[19]]),
    }
}

fuzz_target!(|raw: [u8; 20]| {
    let value = sock_addr(&raw);
    let decoded = SocketAddr::from(value);
    let back = SockAddr::from(decoded);
    assert_eq!(back.port, value.port);
    match value.family {
        AF_INET => assert_eq!((back.family, back.ip[0]), (AF_INET, value.ip[0])),
        AF_INET6 if back.family == AF_INET6 => assert_eq!(back.ip, value.ip),
        _ => {}
    }
});
