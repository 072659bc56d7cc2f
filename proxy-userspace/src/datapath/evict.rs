//! Kernel eviction: destroys the TCP sockets of a network namespace that are connected
//! straight to a dead endpoint (netlink `SOCK_DESTROY`, which needs
//! `CONFIG_INET_DIAG_DESTROY`), so the app sees the abort at once and reconnects to a
//! live Pod instead of waiting on a peer that will never answer.

use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::OwnedFd,
};

use crate::sys;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const HEADER: usize = 16;
/// `struct inet_diag_sockid`: ports, addresses, interface, cookie.
const SOCKID: usize = 48;
/// Every TCP state but LISTEN.
const STATES: u32 = 0xfff & !(1 << 10);

/// Destroys every TCP socket in the network namespace `ns` is open on whose peer is
/// `dst`. Returns how many it destroyed. Runs on a short-lived thread, because entering
/// a namespace moves the calling thread.
pub fn destroy_connections_to(ns: &File, dst: SocketAddr) -> io::Result<usize> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                sys::enter_netns(ns)?;
                let socket = sys::sock_diag_socket()?;
                let mut destroyed = 0;
                for family in [libc::AF_INET, libc::AF_INET6] {
                    for id in connected_to(&socket, family as u8, dst)? {
                        destroyed += usize::from(destroy(&socket, family as u8, &id)?);
                    }
                }
                Ok(destroyed)
            })
            .join()
    })
    .map_err(|_| io::Error::other("eviction thread panicked"))?
}

/// The socket ids (`inet_diag_sockid`) of `family`'s TCP sockets connected to `dst`
/// (IPv4 peers also match as v4-mapped IPv6).
fn connected_to(socket: &OwnedFd, family: u8, dst: SocketAddr) -> io::Result<Vec<[u8; SOCKID]>> {
    sys::send(
        socket,
        &request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, family, STATES, &[0; SOCKID]),
    )?;
    let mut found = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let len = sys::recv(socket, &mut buf)?;
        for (kind, body) in messages(&buf[..len]) {
            match kind {
                NLMSG_DONE => return Ok(found),
                NLMSG_ERROR => error_code(body)?,
                SOCK_DIAG_BY_FAMILY if body.len() >= 4 + SOCKID => {
                    let id: [u8; SOCKID] = body[4..4 + SOCKID].try_into().expect("length checked");
                    if peer(family, &id) == Some(dst) {
                        found.push(id);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Destroys one socket; `false` if it was already gone.
fn destroy(socket: &OwnedFd, family: u8, id: &[u8; SOCKID]) -> io::Result<bool> {
    sys::send(socket, &request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, family, 0xfff, id))?;
    let mut buf = [0u8; 512];
    let len = sys::recv(socket, &mut buf)?;
    for (kind, body) in messages(&buf[..len]) {
        if kind == NLMSG_ERROR {
            return match error_code(body) {
                Ok(()) => Ok(true),
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(false),
                Err(err) => Err(err),
            };
        }
    }
    Err(io::Error::other("SOCK_DESTROY: no acknowledgement from the kernel"))
}

/// A netlink message carrying an `inet_diag_req_v2` for TCP.
fn request(kind: u16, flags: u16, family: u8, states: u32, id: &[u8; SOCKID]) -> Vec<u8> {
    let len = HEADER + 8 + SOCKID;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&[0; 8]); // sequence number and port id: the kernel's defaults
    m.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    m.extend_from_slice(&states.to_ne_bytes());
    m.extend_from_slice(id);
    m
}

/// The (type, body) of each netlink message in one datagram.
fn messages(mut datagram: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if datagram.len() < HEADER {
            return None;
        }
        let len = u32::from_ne_bytes(datagram[..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(datagram[4..6].try_into().ok()?);
        if len < HEADER || len > datagram.len() {
            return None;
        }
        let body = &datagram[HEADER..len];
        datagram = datagram.get((len + 3) & !3..).unwrap_or(&[]);
        Some((kind, body))
    })
}

/// The result an `NLMSG_ERROR` message carries (0 is an acknowledgement).
fn error_code(body: &[u8]) -> io::Result<()> {
    let code = body.get(..4).map_or(-libc::EIO, |b| i32::from_ne_bytes(b.try_into().expect("4")));
    if code == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-code)) }
}

/// The peer address of a socket id, as a v4 address when it is v4 or v4-mapped.
fn peer(family: u8, id: &[u8; SOCKID]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([id[2], id[3]]);
    let dst = &id[20..36];
    let ip = match i32::from(family) {
        libc::AF_INET => IpAddr::from(<[u8; 4]>::try_from(&dst[..4]).ok()?),
        libc::AF_INET6 => Ipv6Addr::from(<[u8; 16]>::try_from(dst).ok()?).to_canonical(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn messages_are_split_and_bounded() {
        let one = request(SOCK_DESTROY, NLM_F_REQUEST, 2, 0, &[7; SOCKID]);
        let mut two = one.clone();
        two.extend_from_slice(&one);
        let parsed: Vec<_> = messages(&two).collect();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].0, SOCK_DESTROY);
        assert_eq!(parsed[0].1.len(), 8 + SOCKID);
        // A length past the end, or below the header, ends the walk instead of panicking.
        let mut broken = one.clone();
        broken[0] = 0xff;
        assert_eq!(messages(&broken).count(), 0);
        assert_eq!(messages(&[1, 0, 0, 0]).count(), 0);
    }

    #[test]
    fn destroys_only_the_connections_to_the_given_peer() {
        // Loopback in this process's own namespace: two listeners, three connections.
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut to_a: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(a.local_addr().unwrap()).unwrap())
            .collect();
        let mut to_b = std::net::TcpStream::connect(b.local_addr().unwrap()).unwrap();
        let _accepted: Vec<_> = (0..2).map(|_| a.accept().unwrap()).collect();
        let _accepted_b = b.accept().unwrap();

        let own = File::open("/proc/self/ns/net").unwrap();
        let destroyed = destroy_connections_to(&own, a.local_addr().unwrap()).unwrap();
        assert_eq!(destroyed, 2);
        for stream in &mut to_a {
            let err = stream.read(&mut [0; 1]).expect_err("destroyed");
            assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
        }
        to_b.set_nonblocking(true).unwrap();
        let untouched = to_b.read(&mut [0; 1]).expect_err("still open, nothing to read");
        assert_eq!(untouched.kind(), io::ErrorKind::WouldBlock);
    }
}
