//! Hand-off between an agent and its successor on the same node (an upgrade, or a
//! second agent started by hand): the running agent passes its listening sockets to
//! the successor over a unix socket, then stops accepting and drains. The sockets
//! stay open throughout, so no connect is refused and none waits on a closed port.
//!
//! The unix socket is abstract (no file to clean up), named after the pin directory,
//! and hands the listeners only to a process of the same user.

use std::{
    io::{self, Read as _, Write as _},
    net::SocketAddr,
    os::{
        fd::{AsFd, OwnedFd},
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream},
    },
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    io::AsyncReadExt as _,
    net::{TcpListener, TcpSocket},
    sync::watch,
};
use tracing::{info, warn};

use crate::sys;

/// How long a successor that asked waits for the listeners.
const PATIENCE: Duration = Duration::from_secs(5);
/// The successor's request.
const TAKE: u8 = b'T';

/// The sockets an agent serves on: the proxy's listeners, then the admin endpoint's.
pub struct Listeners {
    pub proxy: Vec<TcpListener>,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds `proxy` and `admin` afresh.
    pub async fn bind(proxy: &[SocketAddr], admin: SocketAddr) -> anyhow::Result<Self> {
        let mut listeners = Vec::new();
        for &addr in proxy {
            listeners.push(bind(addr, "listen").await?);
        }
        Ok(Self { proxy: listeners, admin: bind(admin, "admin").await? })
    }

    /// Second descriptors for the same sockets, in hand-off order.
    pub fn duplicate(&self) -> io::Result<Vec<OwnedFd>> {
        self.proxy
            .iter()
            .chain([&self.admin])
            .map(|listener| listener.as_fd().try_clone_to_owned())
            .collect()
    }

    fn from_fds(fds: Vec<OwnedFd>) -> io::Result<Self> {
        let mut listeners = fds
            .into_iter()
            .map(|fd| {
                let listener = std::net::TcpListener::from(fd);
                listener.set_nonblocking(true)?;
                TcpListener::from_std(listener)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let admin = listeners.pop().ok_or_else(|| io::Error::other("no listener received"))?;
        Ok(Self { proxy: listeners, admin })
    }
}

/// Connections the kernel may queue for `accept` (capped by `net.core.somaxconn`): a
/// burst of connects beyond it would see dropped SYNs and a second's wait.
const BACKLOG: u32 = 4096;

async fn bind(addr: SocketAddr, field: &str) -> anyhow::Result<TcpListener> {
    let listen = || -> io::Result<TcpListener> {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    listen().with_context(|| {
        format!(
            "{field}: cannot listen on {addr}; if the address is missing on this node, \
             add it (for example `ip addr add {}/32 dev lo`); if another program holds \
             the port, stop it",
            addr.ip()
        )
    })
}

fn address(pin_dir: &Path) -> io::Result<UnixAddr> {
    UnixAddr::from_abstract_name(format!("sockeye-handoff:{}", pin_dir.display()))
}

/// An agent already serving this node, found at start.
pub struct Predecessor(UnixStream);

impl Predecessor {
    /// The agent that owns `pin_dir`, if one is running and offers a hand-off.
    pub fn find(pin_dir: &Path) -> Option<Self> {
        let stream = UnixStream::connect_addr(&address(pin_dir).ok()?).ok()?;
        Some(Self(stream))
    }

    /// Takes the predecessor's listeners; it then stops accepting and drains.
    pub async fn take(self) -> anyhow::Result<Listeners> {
        let Self(mut stream) = self;
        let fds = tokio::task::spawn_blocking(move || -> io::Result<Vec<OwnedFd>> {
            stream.set_read_timeout(Some(PATIENCE))?;
            stream.write_all(&[TAKE])?;
            let fds = sys::recv_fds(&stream, 8)?;
            // The predecessor closes the stream once it no longer holds the hand-off
            // address, which is then free for this agent to offer.
            let _ = stream.read(&mut [0u8]);
            Ok(fds)
        })
        .await?
        .context("taking the listeners over from the running agent")?;
        let listeners = Listeners::from_fds(fds)?;
        info!(
            listeners = listeners.proxy.len() + 1,
            "took the listeners over from the running agent"
        );
        Ok(listeners)
    }
}

/// Offers `fds` (from [`Listeners::duplicate`]) to a successor; returns once one has
/// taken them. `waiting` is true while a successor is connected and getting ready.
pub async fn offer(
    pin_dir: &Path,
    fds: Vec<OwnedFd>,
    waiting: &watch::Sender<bool>,
) -> anyhow::Result<()> {
    let listener = UnixListener::bind_addr(&address(pin_dir)?)
        .context("cannot offer a hand-off (is another agent using this pin directory?)")?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    loop {
        let (stream, _) = listener.accept().await?;
        waiting.send_replace(true);
        let handed = hand_over(stream, &fds).await;
        waiting.send_replace(false);
        match handed {
            Ok(stream) => {
                // Free the address first: the successor offers it next.
                drop(listener);
                drop(stream);
                info!("listeners handed to a successor");
                return Ok(());
            }
            Err(err) => warn!("hand-off refused: {err}"),
        }
    }
}

/// Waits (as long as it takes) for the connected successor to be ready and ask, then
/// sends it `fds`.
async fn hand_over(
    mut stream: tokio::net::UnixStream,
    fds: &[OwnedFd],
) -> io::Result<tokio::net::UnixStream> {
    let uid = sys::peer_uid(stream.as_fd())?;
    if uid != sys::euid() {
        return Err(io::Error::other(format!(
            "the successor runs as uid {uid}, not as this agent"
        )));
    }
    info!("a successor is starting; it takes the listeners once ready");
    let mut request = [0u8];
    stream.read_exact(&mut request).await?;
    if request[0] != TAKE {
        return Err(io::Error::other("not a hand-off request"));
    }
    let fds: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
    // One byte and a few descriptors fit the empty socket buffer: this does not block.
    sys::send_fds(stream.as_fd(), &fds)?;
    Ok(stream)
}
