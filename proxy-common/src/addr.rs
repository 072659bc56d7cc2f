//! Socket addresses as the kernel hands them to sockeye's programs.
//!
//! IP words are kept exactly as the kernel stores them (network byte order in memory),
//! so the kernel side only copies; ports are kept in host byte order. Both sides run on
//! the same machine, so userspace reads the words with native-endian conversions.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// An IPv4 or IPv6 address and port. For IPv4 only `ip[0]` is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SockAddr {
    pub ip: [u32; 4],
    pub port: u16,
    pub family: u16,
}

impl SockAddr {
    /// `ip` in network byte order as the kernel stores it, `port` in host order.
    pub const fn v4(ip: u32, port: u16) -> Self {
        Self { ip: [ip, 0, 0, 0], port, family: AF_INET }
    }

    /// `ip` in network byte order as the kernel stores it, `port` in host order.
    /// An IPv4-mapped address (`::ffff:a.b.c.d`) becomes the IPv4 address, because
    /// that is the connection the kernel really makes.
    pub const fn v6(ip: [u32; 4], port: u16) -> Self {
        if is_v4_mapped(ip) {
            return Self::v4(ip[3], port);
        }
        Self { ip, port, family: AF_INET6 }
    }

    pub const fn is_v4(&self) -> bool {
        self.family == AF_INET
    }

    /// The words to write into an IPv6 socket address: IPv4 addresses come back mapped.
    pub const fn ip6_words(&self) -> [u32; 4] {
        if self.is_v4() { [0, 0, V4_MAPPED_MARK, self.ip[0]] } else { self.ip }
    }
}

/// The third word of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), in memory order.
const V4_MAPPED_MARK: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

const fn is_v4_mapped(ip: [u32; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_MARK
}

impl From<SocketAddr> for SockAddr {
    fn from(addr: SocketAddr) -> Self {
        match addr.ip() {
            IpAddr::V4(ip) => Self::v4(u32::from_ne_bytes(ip.octets()), addr.port()),
            IpAddr::V6(ip) => {
                let o = ip.octets();
                let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                Self::v6([word(0), word(4), word(8), word(12)], addr.port())
            }
        }
    }
}

impl From<SockAddr> for SocketAddr {
    fn from(addr: SockAddr) -> Self {
        let ip = if addr.is_v4() {
            IpAddr::V4(Ipv4Addr::from(addr.ip[0].to_ne_bytes()))
        } else {
            let mut octets = [0u8; 16];
            for (chunk, word) in octets.chunks_exact_mut(4).zip(addr.ip) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        };
        SocketAddr::new(ip, addr.port)
    }
}

/// A TCP connection seen from its client: `src` is the client, `dst` the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FourTuple {
    pub src: SockAddr,
    pub dst: SockAddr,
}

/// Where a steered connection was going, and the network namespace it came from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OrigDst {
    pub dst: SockAddr,
    pub reserved: u32,
    /// The connecting socket's network namespace cookie.
    pub netns: u64,
}

/// Port conversions for the kernel's context structs (little-endian BPF only).
pub mod port {
    /// `bpf_sock_addr.user_port`: a network-order port in the low 16 bits.
    pub const fn from_sock_addr(raw: u32) -> u16 {
        u16::from_be(raw as u16)
    }

    pub const fn to_sock_addr(port: u16) -> u32 {
        port.to_be() as u32
    }

    /// `bpf_sock_ops.remote_port`: a network-order port shifted into the high 16 bits.
    pub const fn from_sock_ops_remote(raw: u32) -> u16 {
        u16::from_be((raw >> 16) as u16)
    }

    /// `bpf_sock_ops.local_port`: already in host order.
    pub const fn from_sock_ops_local(raw: u32) -> u16 {
        raw as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_round_trips_through_kernel_layout() {
        let addr: SocketAddr = "10.96.0.10:50051".parse().unwrap();
        let sock = SockAddr::from(addr);
        assert!(sock.is_v4());
        // The first word holds the address bytes in network order, as user_ip4 does.
        assert_eq!(sock.ip[0].to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(SocketAddr::from(sock), addr);
    }

    #[test]
    fn ipv6_round_trips_and_mapped_ipv4_collapses() {
        let addr: SocketAddr = "[fd96::10]:50051".parse().unwrap();
        assert_eq!(SocketAddr::from(SockAddr::from(addr)), addr);

        let mapped: SocketAddr = "[::ffff:10.96.0.10]:80".parse().unwrap();
        let sock = SockAddr::from(mapped);
        assert_eq!(sock, SockAddr::from("10.96.0.10:80".parse::<SocketAddr>().unwrap()));
        assert_eq!(sock.ip6_words(), SockAddr::from(mapped).ip6_words());
        assert_eq!(SockAddr::v6(sock.ip6_words(), 80), sock);
    }

    #[test]
    fn ports_decode_from_kernel_context_layouts() {
        let port: u16 = 15001;
        assert_eq!(port::from_sock_addr(port::to_sock_addr(port)), port);
        let remote_raw = (u32::from(port.to_be())) << 16;
        assert_eq!(port::from_sock_ops_remote(remote_raw), port);
        assert_eq!(port::from_sock_ops_local(u32::from(port)), port);
    }
}
