//! Opaque TCP: one endpoint per connection, chosen like a request's (P2C), moving on
//! to another endpoint when a connect is refused or times out, or when the endpoint is
//! at its connection cap; then bytes both ways.

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};
use tracing::{debug, warn};

use crate::{
    balance::InFlight,
    state::{Endpoint, LocalOriginFailure, Outcome},
    upstream::Balancer,
};

/// Each direction reads into this much first: all an idle connection holds.
const SMALL: usize = 512;
/// A read that fills the small buffer means more is waiting: read this much at a time
/// until a read comes back short.
const LARGE: usize = 64 * 1024;

/// Forwards `client` to one of the balancer's endpoints; with `idle`, the connection is
/// closed once no byte has moved either way for that long.
pub async fn forward<S>(client: S, balancer: Arc<Balancer>, idle: Option<Duration>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let service = &balancer.service;
    balancer.calls.request();
    let Some((upstream, endpoint, _slot)) = connect_any(&balancer).await else {
        warn!(service = %service.name, "no endpoint accepted a connection");
        return;
    };
    let _in_flight = InFlight::new(endpoint.clone());
    match relay(client, upstream, idle).await {
        Ok((up, down)) => {
            debug!(service = %service.name, endpoint = %endpoint.addr, up, down, "connection done")
        }
        Err(err) => {
            debug!(service = %service.name, endpoint = %endpoint.addr, "connection ended: {err}")
        }
    }
}

/// One of an endpoint's opaque-TCP connection slots, held while the connection lives.
struct Slot(Arc<Endpoint>);

impl Slot {
    fn take(endpoint: &Arc<Endpoint>, cap: u32) -> Option<Self> {
        let connections = &endpoint.load.connections;
        let taken = connections
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < cap).then_some(n + 1));
        taken.is_ok().then(|| Self(endpoint.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.load.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connect_any(balancer: &Balancer) -> Option<(TcpStream, Arc<Endpoint>, Slot)> {
    let service = &balancer.service;
    let timeout = service.policy().timeout.connect;
    let mut tried = Vec::new();
    loop {
        // The snapshot is released before the connect's await.
        let Some(endpoint) = balancer.select.pick(&service.endpoints(), &tried) else { break };
        tried.push(endpoint.clone());
        let Some(slot) = Slot::take(&endpoint, balancer.connection_cap) else {
            balancer.metrics.limit_hit("endpoint");
            continue;
        };
        let started = Instant::now();
        let failure = match tokio::time::timeout(timeout, TcpStream::connect(endpoint.addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                crate::balance::pewma::observe(&endpoint.load, started.elapsed());
                return Some((stream, endpoint, slot));
            }
            Ok(Err(err)) => {
                debug!(service = %service.name, endpoint = %endpoint.addr, "connect failed: {err}");
                LocalOriginFailure::ConnectRefused
            }
            Err(_) => LocalOriginFailure::ConnectTimeout,
        };
        service.report(&endpoint, Outcome::LocalOrigin(failure));
        balancer.metrics.upstream_error(&service.name, failure);
    }
    None
}

/// Copies bytes both ways until both sides have ended (a half-close is passed on), or
/// either fails, or (with `idle`) nothing moved for that long. Returns the bytes sent
/// up and down.
async fn relay<S>(client: S, upstream: TcpStream, idle: Option<Duration>) -> io::Result<(u64, u64)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = upstream.into_split();
    let up = pump(client_read, upstream_write, &activity);
    let down = pump(upstream_read, client_write, &activity);
    tokio::pin!(up, down);
    let (mut sent_up, mut sent_down) = (None, None);
    while sent_up.is_none() || sent_down.is_none() {
        let idle_until = idle.map(|idle| activity.last() + idle);
        tokio::select! {
            bytes = &mut up, if sent_up.is_none() => sent_up = Some(bytes?),
            bytes = &mut down, if sent_down.is_none() => sent_down = Some(bytes?),
            () = sleep_until(idle_until) => {
                // Bytes may have moved since the deadline was set: it moved with them.
                if idle.is_some_and(|idle| activity.last() + idle <= Instant::now()) {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "idle for too long"));
                }
            }
        }
    }
    Ok((sent_up.unwrap_or(0), sent_down.unwrap_or(0)))
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// When a byte last moved either way.
struct Activity {
    since: Instant,
    last_ns: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { since: Instant::now(), last_ns: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let now = Instant::now().saturating_duration_since(self.since).as_nanos() as u64;
        self.last_ns.fetch_max(now, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.since + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed))
    }
}

/// Moves bytes from `from` to `to` until `from` ends, then shuts `to`'s write side.
/// The large buffer exists only while reads keep filling it.
async fn pump<R, W>(mut from: R, mut to: W, activity: &Activity) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut small = [0u8; SMALL];
    let mut large: Option<Box<[u8]>> = None;
    let mut total = 0;
    loop {
        let buf: &mut [u8] = match large.as_deref_mut() {
            Some(large) => large,
            None => &mut small,
        };
        let n = from.read(buf).await?;
        activity.touch();
        if n == 0 {
            to.shutdown().await?;
            return Ok(total);
        }
        let full = n == buf.len();
        to.write_all(&buf[..n]).await?;
        total += n as u64;
        if !full {
            large = None;
        } else if large.is_none() {
            large = Some(vec![0; LARGE].into_boxed_slice());
        } else {
            // A stream that keeps the buffer full would keep the worker for many
            // buffers per poll; let the other connections (and accepts) have a turn.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    #[tokio::test]
    async fn relay_moves_large_and_small_writes_both_ways_and_passes_half_closes() {
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = backend.local_addr().unwrap();
        // The backend reads to the client's half-close, then sends it all back.
        let echo = tokio::spawn(async move {
            let (mut stream, _) = backend.accept().await.unwrap();
            let mut got = Vec::new();
            stream.read_to_end(&mut got).await.unwrap();
            stream.write_all(&got).await.unwrap();
            got.len()
        });
        let (client, agent_side) = tokio::io::duplex(1 << 20);
        let upstream = TcpStream::connect(addr).await.unwrap();
        let relay = tokio::spawn(relay(agent_side, upstream, Some(Duration::from_secs(60))));

        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut reader, mut writer) = tokio::io::split(client);
        let send = payload.clone();
        let writing = tokio::spawn(async move {
            writer.write_all(&send[..7]).await.unwrap();
            writer.write_all(&send[7..]).await.unwrap();
            writer.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        reader.read_to_end(&mut back).await.unwrap();
        writing.await.unwrap();
        assert_eq!(echo.await.unwrap(), payload.len());
        assert!(back == payload, "bytes differ");
        let (up, down) = relay.await.unwrap().unwrap();
        assert_eq!((up, down), (payload.len() as u64, payload.len() as u64));
    }

    #[test]
    fn slots_stop_at_the_cap_and_come_back_when_dropped() {
        let endpoint =
            Endpoint::new("10.0.0.1:80".parse().unwrap(), crate::state::Lifecycle::Ready);
        let first = Slot::take(&endpoint, 2).unwrap();
        let _second = Slot::take(&endpoint, 2).unwrap();
        assert!(Slot::take(&endpoint, 2).is_none());
        drop(first);
        assert!(Slot::take(&endpoint, 2).is_some());
    }
}

#[cfg(test)]
mod idle_tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_relay_idle_for_its_timeout_is_closed_and_activity_keeps_it_open() {
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = backend.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = backend.accept().await.unwrap();
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                stream.write_all(&buf[..n]).await.unwrap();
            }
        });
        let (mut client, agent_side) = tokio::io::duplex(1024);
        let upstream = TcpStream::connect(addr).await.unwrap();
        let idle = Duration::from_secs(30);
        let relay = tokio::spawn(relay(agent_side, upstream, Some(idle)));
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            client.write_all(b"ping").await.unwrap();
            let mut back = [0u8; 4];
            client.read_exact(&mut back).await.unwrap();
        }
        assert!(!relay.is_finished(), "60 s old, but never 30 s idle");
        tokio::time::sleep(idle + Duration::from_secs(1)).await;
        let ended = relay.await.unwrap().unwrap_err();
        assert_eq!(ended.kind(), io::ErrorKind::TimedOut);
    }
}
