//! Kernel eviction: destroys the TCP sockets of a network namespace that are connected
//! straight to a dead endpoint (netlink `SOCK_DESTROY`, which needs
//! `CONFIG_INET_DIAG_DESTROY`), so the app sees the abort at once and reconnects to a
//! live Pod instead of waiting on a peer that will never answer.
//!
//! The kernel is asked only for the sockets connected to that endpoint: the
//! `sock_diag` dump carries an `INET_DIAG_REQ_BYTECODE` filter (`INET_DIAG_BC_D_COND`
//! on the endpoint's address and port), so a namespace's other sockets are skipped in
//! the kernel, never copied out. The messages are `netlink-packet-sock-diag`'s types
//! on a `netlink-sys` socket; only the filter's bytecode, which that crate does not
//! model, is written here.

use std::{
    fs::File,
    io,
    net::{IpAddr, SocketAddr},
};

use netlink_packet_core::{
    DefaultNla, Emitable, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_sock_diag::{
    SOCK_DIAG_BY_FAMILY, SockDiagDestroy, SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};

use crate::sys;

/// `INET_DIAG_REQ_BYTECODE`: the request attribute holding a filter.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// `INET_DIAG_BC_D_COND`: the destination matches a `struct inet_diag_hostcond`.
const INET_DIAG_BC_D_COND: u8 = 8;
/// How many `SOCK_DESTROY` requests go to the kernel in one write.
const DESTROY_BATCH: usize = 256;

/// Destroys every TCP socket in the network namespace `ns` is open on whose peer is
/// `dst`. Returns how many it destroyed. Runs on a short-lived thread, because entering
/// a namespace moves the calling thread.
pub fn destroy_connections_to(ns: &File, dst: SocketAddr) -> io::Result<usize> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                sys::enter_netns(ns)?;
                let socket = sock_diag_socket()?;
                // The kernel filtered; the check again guards against one that ignored
                // the filter.
                let found: Vec<(u8, SocketId)> = connected_to(&socket, dst)?
                    .into_iter()
                    .filter(|(_, id)| peer(id) == canonical(dst))
                    .collect();
                let mut destroyed = 0;
                for batch in found.chunks(DESTROY_BATCH) {
                    destroyed += destroy(&socket, batch)?;
                }
                Ok(destroyed)
            })
            .join()
    })
    .map_err(|_| io::Error::other("eviction thread panicked"))?
}

fn sock_diag_socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    // Acknowledgements without a copy of each request.
    socket.set_cap_ack(true)?;
    Ok(socket)
}

/// The TCP sockets (not listening) connected to `dst`, by family, as the kernel
/// reports them: IPv4 sockets, and IPv6 ones (an IPv6 socket reaches an IPv4 peer at
/// its v4-mapped address, which the kernel's filter matches too).
pub fn connected_to(socket: &Socket, dst: SocketAddr) -> io::Result<Vec<(u8, SocketId)>> {
    let families: &[u8] = if canonical(dst).is_ipv4() { &[AF_INET, AF_INET6] } else { &[AF_INET6] };
    let mut found = Vec::new();
    for &family in families {
        let request = FilteredDump::new(family, canonical(dst));
        send(socket, NLM_F_REQUEST | NLM_F_DUMP, request)?;
        receive(socket, |message| match message {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                found.push((family, response.header.socket_id));
                Ok(true)
            }
            NetlinkPayload::Done(_) => Ok(false),
            NetlinkPayload::Error(err) => Err(err.to_io()),
            _ => Ok(true),
        })?;
    }
    Ok(found)
}

/// Destroys these sockets with one write of `SOCK_DESTROY` requests; returns how many
/// were destroyed (one already gone is not counted).
fn destroy(socket: &Socket, sockets: &[(u8, SocketId)]) -> io::Result<usize> {
    let mut buffer = Vec::new();
    for (family, id) in sockets {
        let request = SockDiagDestroy::new(SockDiagMessage::InetRequest(InetRequest {
            family: *family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: id.clone(),
        }));
        buffer.extend_from_slice(&serialize(NLM_F_REQUEST | NLM_F_ACK, request));
    }
    socket.send(&buffer, 0)?;
    let (mut acknowledged, mut destroyed) = (0, 0);
    while acknowledged < sockets.len() {
        receive(socket, |message| match message {
            NetlinkPayload::Error(ack) => {
                acknowledged += 1;
                match ack.raw_code() {
                    0 => destroyed += 1,
                    code if code == -libc::ENOENT => {}
                    _ => return Err(ack.to_io()),
                }
                Ok(false)
            }
            _ => Ok(true),
        })?;
    }
    Ok(destroyed)
}

/// A `SOCK_DIAG_BY_FAMILY` dump of one family's TCP sockets, filtered in the kernel
/// to those whose destination is one address and port.
struct FilteredDump {
    request: InetRequest,
    filter: DefaultNla,
}

impl FilteredDump {
    fn new(family: u8, dst: SocketAddr) -> Self {
        let mut states = StateFlags::all();
        states.remove(StateFlags::LISTEN);
        let socket_id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
        Self {
            request: InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states,
                socket_id,
            },
            filter: DefaultNla::new(INET_DIAG_REQ_BYTECODE, destination_is(dst)),
        }
    }
}

impl NetlinkSerializable for FilteredDump {
    fn message_type(&self) -> u16 {
        SOCK_DIAG_BY_FAMILY
    }

    fn buffer_len(&self) -> usize {
        self.request.buffer_len() + self.filter.buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        let (request, filter) = buffer.split_at_mut(self.request.buffer_len());
        self.request.emit(request);
        self.filter.emit(filter);
    }
}

/// The inet_diag bytecode "the destination is `dst`": one `struct inet_diag_bc_op`
/// (`INET_DIAG_BC_D_COND`; on a match jump to the end, which accepts; otherwise past
/// it, which rejects) and its `struct inet_diag_hostcond` (family, prefix length in
/// bits, port in host order, then the address).
pub fn destination_is(dst: SocketAddr) -> Vec<u8> {
    let (family, address) = match dst.ip() {
        IpAddr::V4(ip) => (AF_INET, ip.octets().to_vec()),
        IpAddr::V6(ip) => (AF_INET6, ip.octets().to_vec()),
    };
    let len = 4 + 8 + address.len();
    let mut code = Vec::with_capacity(len);
    code.extend_from_slice(&[INET_DIAG_BC_D_COND, len as u8]);
    code.extend_from_slice(&(len as u16 + 4).to_ne_bytes());
    code.extend_from_slice(&[family, (address.len() * 8) as u8, 0, 0]);
    code.extend_from_slice(&i32::from(dst.port()).to_ne_bytes());
    code.extend_from_slice(&address);
    code
}

fn serialize<T: NetlinkSerializable>(flags: u16, inner: T) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
    message.finalize();
    let mut buffer = vec![0; message.buffer_len()];
    message.serialize(&mut buffer);
    buffer
}

fn send<T: NetlinkSerializable>(socket: &Socket, flags: u16, inner: T) -> io::Result<()> {
    socket.send(&serialize(flags, inner), 0).map(|_| ())
}

/// Reads datagrams and hands each message to `each` until it returns false.
fn receive(
    socket: &Socket,
    mut each: impl FnMut(NetlinkPayload<SockDiagMessage>) -> io::Result<bool>,
) -> io::Result<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let len = socket.recv(&mut &mut buffer[..], 0)?;
        let mut datagram = &buffer[..len];
        while !datagram.is_empty() {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(datagram)
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
            let length = (message.header.length as usize + 3) & !3;
            if !each(message.payload)? {
                return Ok(());
            }
            datagram = datagram.get(length.max(1)..).unwrap_or(&[]);
        }
    }
}

/// A socket's peer, as an IPv4 address when it is v4-mapped.
fn peer(id: &SocketId) -> SocketAddr {
    canonical(SocketAddr::new(id.destination_address, id.destination_port))
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn the_filter_is_one_destination_condition_on_address_and_port() {
        let v4 = destination_is("10.0.0.7:8080".parse().unwrap());
        assert_eq!(v4.len(), 16);
        assert_eq!(&v4[..2], &[INET_DIAG_BC_D_COND, 16]);
        assert_eq!(u16::from_ne_bytes([v4[2], v4[3]]), 20, "a miss jumps past the end");
        assert_eq!(&v4[4..6], &[AF_INET, 32]);
        assert_eq!(i32::from_ne_bytes(v4[8..12].try_into().unwrap()), 8080);
        assert_eq!(&v4[12..], &[10, 0, 0, 7]);
        let v6 = destination_is("[fd10::1]:80".parse().unwrap());
        assert_eq!((v6.len(), v6[1], v6[4], v6[5]), (28, 28, AF_INET6, 128));
    }

    #[test]
    fn the_kernel_returns_only_the_sockets_to_the_destination_and_they_are_destroyed() {
        // Loopback in this process's own namespace: two listeners; 2 connections to
        // one, 50 to the other.
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut to_a: Vec<_> =
            (0..2).map(|_| std::net::TcpStream::connect(a_addr).unwrap()).collect();
        let mut to_b: Vec<_> =
            (0..50).map(|_| std::net::TcpStream::connect(b_addr).unwrap()).collect();
        let _accepted: Vec<_> = (0..2).map(|_| a.accept().unwrap()).collect();
        let _accepted_b: Vec<_> = (0..50).map(|_| b.accept().unwrap()).collect();

        // Unfiltered here: what the kernel sent back is what matched its filter.
        let socket = sock_diag_socket().unwrap();
        let found = connected_to(&socket, a_addr).unwrap();
        let peers: Vec<SocketAddr> = found.iter().map(|(_, id)| peer(id)).collect();
        assert_eq!(peers, [a_addr, a_addr], "only the two connected to a, not b's 50");

        let own = File::open("/proc/self/ns/net").unwrap();
        assert_eq!(destroy_connections_to(&own, a_addr).unwrap(), 2);
        for stream in &mut to_a {
            let err = stream.read(&mut [0; 1]).expect_err("destroyed");
            assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
        }
        for stream in &mut to_b {
            stream.set_nonblocking(true).unwrap();
            let untouched = stream.read(&mut [0; 1]).expect_err("still open, nothing to read");
            assert_eq!(untouched.kind(), io::ErrorKind::WouldBlock);
        }
        assert_eq!(destroy_connections_to(&own, a_addr).unwrap(), 0, "none left");
    }
}
