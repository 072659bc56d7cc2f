//! `sk-pod`: the programs sandbox Pods run.
//!
//!   sk-pod tcp-echo --port P --name NAME
//!       Listens on [::]:P (IPv4 and IPv6). Each connection first receives
//!       "NAME CLIENT-IP\n", then has its bytes echoed back.
//!   sk-pod tcp-probe --to ADDR --count N [--concurrency C] [--timeout-ms T]
//!                    [--duration-ms D]
//!       Opens N connections to ADDR (C at a time; with D, stops after D ms if not
//!       done), checks each against an echo backend and what getpeername() says, and
//!       prints a JSON report (sandbox::probe::Report) as its last line.
//!   sk-pod grpc-server --port P --name NAME [--refuse-ms X] [--not-serving-ms Y]
//!                      [--no-watch true]
//!       A gRPC backend: sockeye.test.Echo and grpc.health.v1, steered from stdin
//!       (see sandbox::grpc::backend).
//!   sk-pod grpc-load --to ADDR[,ADDR…] --rate R --duration-ms D [--timeout-ms T]
//!                    [--payload-bytes N] [--max-in-flight M]
//!       Open-loop unary calls over one HTTP/2 connection (per ADDR, called in
//!       turn); prints a JSON report
//!       (sandbox::grpc::load::LoadReport) as its last line.
//!   sk-pod grpc-shape --to ADDR --shape unary|fetch|upload|pingpong|bulk|hold
//!                     [--count N] [--size B] [--pause-ms P] [--read-rate BYTES_PER_S]
//!       One call of that shape, checked end to end; prints progress lines, then a
//!       JSON report (sandbox::grpc::shapes::ShapeReport) as its last line.
//!   sk-pod http-server --port P --name NAME
//!       An HTTP/1.1 (with WebSocket upgrades) and h2c backend (see sandbox::web).
//!   sk-pod http-shape --to ADDR --shape SHAPE [--bytes B] [--count N] [--pause-ms P]
//!       One HTTP exchange of that shape (see sandbox::web::shapes); prints a JSON
//!       report (sandbox::web::shapes::WebReport) as its last line.
//!   sk-pod tcp-hold --to ADDR --count N
//!       Opens N connections to an echo backend and holds them until each ends; prints
//!       `held N`, then a line per ended connection, `last ended at monotonic_ns=T`,
//!       then `ended aborted=A eof=E`.
//!   sk-pod tcp-mirror --port P
//!       Sends back every byte it receives; closes its side after the client's.
//!   sk-pod tcp-stream --to ADDR --connections N --bytes B --chunk C
//!       Over N connections at once, sends B pseudo-random bytes each in writes of C
//!       bytes, half-closes, and reads the mirrored bytes to EOF; prints one JSON line
//!       {"connections","bytes_each_way","intact","elapsed_ms"} (intact: connections
//!       whose bytes came back whole and equal).
//!   sk-pod tcp-pingpong --to ADDR --connections N --duration-ms D --size S
//!       Over N connections, sends S bytes and waits for them to come back, again and
//!       again for D ms; prints {"round_trips","rate","p50_us","p99_us"}.
//!   sk-pod tcp-connect --to ADDR --count N
//!       Connects and closes N times in a row; prints {"count","failed","p50_us","p99_us",
//!       "per_second"}: the time connect() took, and connects (with closes) per second.
//!   sk-pod tcp-idle --to ADDR --count N --hold-ms H
//!       Opens N connections that never send, holds them H ms, then prints
//!       {"opened","still_open"}: how many the far side had not closed.
//!   sk-pod tcp-watch --to ADDR --count N
//!       Opens N connections to an echo backend and prints `conn I BACKEND` for each,
//!       then `held N`; then `conn I BACKEND ended: ERROR|eof` the moment one ends. On a
//!       line `check` on stdin, sends a line on each open connection and prints
//!       `conn I BACKEND alive` when it comes back (`broken: ERROR` if not), then
//!       `checked`.
//!   sk-pod tcp-junk --to ADDR [--hold-ms H]
//!       Opens misbehaving connections (garbage after the HTTP/2 preface, a half
//!       close, silence) and holds them open.
//!   sk-pod http1-hold --to ADDR
//!       Sends one HTTP/1.1 GET, prints `response STATUS-LINE` once the head arrives,
//!       keeps the connection, and prints `ended: eof` or `ended: ERROR` when it ends.
//!   sk-pod pause
//!       Waits forever, as a Pod's sandbox process. The stdin line `become NETNS
//!       CGROUP` moves it into another network namespace and cgroup (a process that
//!       inherited a Pod process's PID); it prints `became`.
//!   sk-pod cpu-burn --threads N --duration-ms D
//!       Keeps N threads busy (no syscalls) for D ms: a saturated node.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context as _, bail};
use sandbox::{
    grpc,
    pattern::{Fnv, fill},
    probe::Report,
    web,
};

#[path = "sk-pod/watch.rs"]
mod watch;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let flags = flags(args)?;
    sandbox::raise_nofile_limit().context("raising the open-file limit")?;
    let get = |name: &str| flags.get(name).with_context(|| format!("--{name} is required"));
    match command.as_str() {
        "tcp-echo" => echo(get("port")?.parse()?, get("name")?),
        "tcp-probe" => {
            let to: SocketAddr = get("to")?.parse()?;
            let count = get("count")?.parse()?;
            let concurrency = flags.get("concurrency").map_or(Ok(1), |c| c.parse())?;
            let timeout = flags.get("timeout-ms").map_or(Ok(2000), |t| t.parse())?;
            let until = flags
                .get("duration-ms")
                .map(|ms| {
                    ms.parse().map(|ms| std::time::Instant::now() + Duration::from_millis(ms))
                })
                .transpose()?;
            let report = probe(to, count, concurrency, Duration::from_millis(timeout), until);
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        "grpc-server" => runtime()?.block_on(grpc::backend::run(grpc::backend::Options {
            port: get("port")?.parse()?,
            name: get("name")?.clone(),
            refuse_for: millis(&flags, "refuse-ms", 0)?,
            not_serving_for: millis(&flags, "not-serving-ms", 0)?,
            no_watch: flags.get("no-watch").is_some_and(|v| v == "true"),
        })),
        "grpc-load" => {
            let to = get("to")?.split(',').map(str::parse).collect::<Result<_, _>>()?;
            let report = runtime()?.block_on(grpc::load::run(grpc::load::Options {
                to,
                rate: get("rate")?.parse()?,
                duration: millis(&flags, "duration-ms", 10_000)?,
                timeout: millis(&flags, "timeout-ms", 2_000)?,
                payload: flags.get("payload-bytes").map_or(Ok(32), |v| v.parse())?,
                max_in_flight: flags.get("max-in-flight").map_or(Ok(1000), |v| v.parse())?,
            }))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        "grpc-shape" => {
            let report = runtime()?.block_on(grpc::shapes::run(grpc::shapes::Options {
                to: get("to")?.parse()?,
                shape: get("shape")?.parse()?,
                count: flags.get("count").map_or(Ok(1), |v| v.parse())?,
                size: flags.get("size").map_or(Ok(100), |v| v.parse())?,
                pause: millis(&flags, "pause-ms", 0)?,
                read_rate: flags.get("read-rate").map(|v| v.parse()).transpose()?,
            }))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        "http-server" => {
            runtime()?.block_on(web::server::run(get("port")?.parse()?, get("name")?.clone()))
        }
        "http-shape" => {
            let report = runtime()?.block_on(web::shapes::run(
                get("to")?.parse()?,
                get("shape")?,
                flags.get("bytes").map_or(Ok(1 << 20), |v| v.parse())?,
                flags.get("count").map_or(Ok(1), |v| v.parse())?,
                millis(&flags, "pause-ms", 0)?,
            ))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        "tcp-hold" => hold(get("to")?.parse()?, get("count")?.parse()?),
        "tcp-mirror" => mirror(get("port")?.parse()?),
        "tcp-stream" => stream(
            get("to")?.parse()?,
            get("connections")?.parse()?,
            get("bytes")?.parse()?,
            get("chunk")?.parse()?,
        ),
        "tcp-pingpong" => pingpong(
            get("to")?.parse()?,
            get("connections")?.parse()?,
            millis(&flags, "duration-ms", 5_000)?,
            get("size")?.parse()?,
        ),
        "tcp-connect" => connects(get("to")?.parse()?, get("count")?.parse()?),
        "tcp-idle" => {
            idle(get("to")?.parse()?, get("count")?.parse()?, millis(&flags, "hold-ms", 0)?)
        }
        "tcp-watch" => watch::run(get("to")?.parse()?, get("count")?.parse()?),
        "tcp-junk" => junk(get("to")?.parse()?, millis(&flags, "hold-ms", 2_000)?),
        "http1-hold" => http1_hold(get("to")?.parse()?),
        "pause" => pause(),
        "cpu-burn" => {
            burn(get("threads")?.parse()?, millis(&flags, "duration-ms", 10_000)?);
            Ok(())
        }
        _ => bail!(
            "usage: sk-pod tcp-echo | tcp-probe | grpc-server | grpc-load | grpc-shape \
             | http-server | http-shape | tcp-hold | tcp-mirror | tcp-stream | tcp-pingpong \
             | tcp-connect | tcp-watch | tcp-idle | tcp-junk | http1-hold | pause | cpu-burn \
             (see the source header)"
        ),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

fn millis(flags: &HashMap<String, String>, name: &str, default: u64) -> anyhow::Result<Duration> {
    let ms = flags.get(name).map_or(Ok(default), |v| v.parse())?;
    Ok(Duration::from_millis(ms))
}

fn flags(args: impl Iterator<Item = String>) -> anyhow::Result<HashMap<String, String>> {
    let args: Vec<String> = args.collect();
    args.chunks(2)
        .map(|pair| match pair {
            [flag, value] if flag.starts_with("--") => {
                Ok((flag.trim_start_matches("--").to_string(), value.clone()))
            }
            _ => bail!("expected `--flag value` pairs, got {pair:?}"),
        })
        .collect()
}

fn echo(port: u16, name: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))?;
    println!("{name} listening on {}", listener.local_addr()?);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let name = name.to_string();
        std::thread::spawn(move || serve_echo(stream, &name));
    }
    Ok(())
}

fn serve_echo(mut stream: TcpStream, name: &str) -> std::io::Result<()> {
    let peer = stream.peer_addr()?.ip().to_canonical();
    writeln!(stream, "{name} {peer}")?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 {
        stream.write_all(line.as_bytes())?;
        line.clear();
    }
    Ok(())
}

fn probe(
    to: SocketAddr,
    count: usize,
    concurrency: usize,
    timeout: Duration,
    until: Option<std::time::Instant>,
) -> Report {
    let report = Mutex::new(Report::default());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let concurrency = concurrency.clamp(1, count.max(1));
    std::thread::scope(|scope| {
        for _ in 0..concurrency {
            let (report, next) = (&report, &next);
            scope.spawn(move || {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count
                    && until.is_none_or(|until| std::time::Instant::now() < until)
                {
                    let outcome = check_once(to, timeout);
                    let mut report = report.lock().unwrap();
                    match outcome {
                        Ok((backend, peer, remote)) => {
                            report.ok += 1;
                            *report.backends.entry(backend).or_default() += 1;
                            *report.peers.entry(peer).or_default() += 1;
                            *report.remote_addrs.entry(remote).or_default() += 1;
                        }
                        Err(err) => {
                            report.failed += 1;
                            *report.errors.entry(format!("{err:#}")).or_default() += 1;
                        }
                    }
                }
            });
        }
    });
    report.into_inner().unwrap()
}

/// One connection: read the backend's greeting, check one echoed line. Returns the
/// backend's name, the client address it saw, and the peer getpeername() gave.
fn check_once(to: SocketAddr, timeout: Duration) -> anyhow::Result<(String, String, String)> {
    let mut stream = TcpStream::connect_timeout(&to, timeout).context("connect")?;
    let remote = stream.peer_addr().context("getpeername")?.to_string();
    stream.set_read_timeout(Some(timeout))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut greeting = String::new();
    reader.read_line(&mut greeting).context("greeting")?;
    let (backend, peer) = greeting.trim().split_once(' ').context("no greeting (reset or EOF)")?;
    stream.write_all(b"ping\n").context("send")?;
    let mut echoed = String::new();
    reader.read_line(&mut echoed).context("echo")?;
    if echoed != "ping\n" {
        bail!("bad echo {echoed:?}");
    }
    Ok((backend.to_string(), peer.to_string(), remote))
}

fn mirror(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))?;
    sandbox::deepen_backlog(&listener, 4096)?;
    println!("mirror listening on {}", listener.local_addr()?);
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || -> std::io::Result<()> {
            std::io::copy(&mut stream.try_clone()?, &mut stream)?;
            stream.shutdown(std::net::Shutdown::Write)
        });
    }
    Ok(())
}

fn stream(to: SocketAddr, connections: usize, bytes: u64, chunk: usize) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let intact = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..connections)
            .map(|i| scope.spawn(move || stream_one(to, i as u64, bytes, chunk)))
            .collect();
        runs.into_iter()
            .map(|run| match run.join().expect("stream thread") {
                Ok(intact) => intact,
                Err(err) => {
                    eprintln!("stream: {err:#}");
                    false
                }
            })
            .filter(|intact| *intact)
            .count()
    });
    let report = serde_json::json!({
        "connections": connections,
        "bytes_each_way": bytes * connections as u64,
        "intact": intact,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    println!("{report}");
    Ok(())
}

/// One connection of `tcp-stream`: whether every byte came back, in order.
fn stream_one(to: SocketAddr, seed: u64, bytes: u64, chunk: usize) -> anyhow::Result<bool> {
    let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(2)).context("connect")?;
    let mut reader = conn.try_clone()?;
    let received = std::thread::spawn(move || -> std::io::Result<(u64, u64)> {
        let (mut hash, mut len, mut buf) = (Fnv::default(), 0u64, vec![0u8; 256 * 1024]);
        loop {
            let n = match std::io::Read::read(&mut reader, &mut buf) {
                Ok(n) => n,
                // A socket in a sockmap may answer a blocking read with EAGAIN when it
                // is woken by the peer's FIN (tcp_bpf_recvmsg); reading again gives EOF.
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            };
            if n == 0 {
                return Ok((len, hash.0));
            }
            hash.add(&buf[..n]);
            len += n as u64;
        }
    });
    let (mut sent, mut rng, mut buf) =
        (Fnv::default(), seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), vec![0u8; chunk]);
    let mut left = bytes;
    while left > 0 {
        let n = chunk.min(left as usize);
        // Cheap bytes that differ per connection.
        rng = fill(rng, &mut buf[..n]);
        conn.write_all(&buf[..n]).context("send")?;
        sent.add(&buf[..n]);
        left -= n as u64;
    }
    conn.shutdown(std::net::Shutdown::Write).context("half-close")?;
    let (len, hash) = received.join().expect("reader thread").context("receive")?;
    Ok(len == bytes && hash == sent.0)
}

fn pingpong(
    to: SocketAddr,
    connections: usize,
    duration: Duration,
    size: usize,
) -> anyhow::Result<()> {
    let histogram = Mutex::new(hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?);
    let started = std::time::Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let runs: Vec<_> = (0..connections)
            .map(|_| {
                let histogram = &histogram;
                scope.spawn(move || -> anyhow::Result<()> {
                    let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
                    conn.set_nodelay(true)?;
                    let (out, mut back) = (vec![7u8; size], vec![0u8; size]);
                    let mut mine =
                        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
                    while started.elapsed() < duration {
                        let at = std::time::Instant::now();
                        conn.write_all(&out)?;
                        read_exact_retrying(&mut conn, &mut back)?;
                        mine.saturating_record(at.elapsed().as_micros() as u64);
                    }
                    histogram.lock().unwrap().add(&mine)?;
                    Ok(())
                })
            })
            .collect();
        for run in runs {
            run.join().expect("pingpong thread")?;
        }
        Ok(())
    })?;
    let h = histogram.into_inner().unwrap();
    let report = serde_json::json!({
        "round_trips": h.len(),
        "rate": h.len() as f64 / started.elapsed().as_secs_f64(),
        "p50_us": h.value_at_quantile(0.5),
        "p99_us": h.value_at_quantile(0.99),
    });
    println!("{report}");
    Ok(())
}

/// `read_exact` that reads again after a spurious EAGAIN (see [`stream_one`]).
fn read_exact_retrying(conn: &mut TcpStream, mut buf: &mut [u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::io::Read::read(conn, buf) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn connects(to: SocketAddr, count: usize) -> anyhow::Result<()> {
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    let mut failed = 0;
    let started = std::time::Instant::now();
    for _ in 0..count {
        let at = std::time::Instant::now();
        match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
            Ok(conn) => {
                h.saturating_record(at.elapsed().as_micros() as u64);
                drop(conn);
            }
            Err(_) => failed += 1,
        }
    }
    let report = serde_json::json!({
        "count": count, "failed": failed,
        "p50_us": h.value_at_quantile(0.5), "p99_us": h.value_at_quantile(0.99),
        "per_second": count as f64 / started.elapsed().as_secs_f64(),
    });
    println!("{report}");
    Ok(())
}

/// Misbehaving clients: the HTTP/2 preface then garbage, the preface then a half close,
/// and a connection that never says anything. Holds them open for `hold`.
fn junk(to: SocketAddr, hold: Duration) -> anyhow::Result<()> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut garbage = TcpStream::connect(to).context("connect (garbage)")?;
    garbage.write_all(PREFACE)?;
    garbage.write_all(&[0xff; 64])?;
    let mut half = TcpStream::connect(to).context("connect (half close)")?;
    half.write_all(PREFACE)?;
    half.shutdown(std::net::Shutdown::Write)?;
    let silent = TcpStream::connect(to).context("connect (silent)")?;
    println!("junk: three connections open to {to}");
    std::thread::sleep(hold);
    drop((garbage, half, silent));
    println!("junk: done");
    Ok(())
}

fn pause() -> anyhow::Result<()> {
    for line in std::io::stdin().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let ["become", netns, cgroup] = words[..] else { continue };
        sandbox::enter_netns(&std::fs::File::open(netns)?).context("setns")?;
        std::fs::write(std::path::Path::new(cgroup).join("cgroup.procs"), "0")
            .context("moving to the cgroup")?;
        println!("became");
    }
    // stdin closed: wait to be killed, as a sandbox process would.
    loop {
        std::thread::park();
    }
}

fn http1_hold(to: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(2)).context("connect")?;
    write!(stream, "GET / HTTP/1.1\r\nHost: sockeye-test\r\n\r\n")?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut status = String::new();
    reader.read_line(&mut status).context("status line")?;
    println!("response {}", status.trim());
    let end = loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => break "eof".to_string(),
            Ok(_) => continue,
            Err(err) => break err.to_string(),
        }
    };
    println!("ended: {end}");
    Ok(())
}

/// Spins `threads` threads for `duration`.
fn burn(threads: usize, duration: Duration) {
    let until = std::time::Instant::now() + duration;
    println!("burning {threads} threads");
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut x = 0u64;
                while std::time::Instant::now() < until {
                    for _ in 0..10_000 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                }
            });
        }
    });
}

/// Holds `count` connections open until the peer or the kernel ends each.
fn idle(to: SocketAddr, count: usize, hold: Duration) -> anyhow::Result<()> {
    let streams = (0..count)
        .map(|_| TcpStream::connect_timeout(&to, Duration::from_secs(5)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("connect")?;
    eprintln!("opened {count}");
    std::thread::sleep(hold);
    let still_open = streams.iter().filter(|stream| is_open(stream)).count();
    println!("{}", serde_json::json!({ "opened": count, "still_open": still_open }));
    Ok(())
}

/// Reads what the far side sent (a server may greet first) without blocking: the
/// connection is open if no end of stream or error follows.
fn is_open(mut stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut buf = [0u8; 4096];
    loop {
        match std::io::Read::read(&mut stream, &mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(err) => return err.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

fn hold(to: SocketAddr, count: usize) -> anyhow::Result<()> {
    let streams = (0..count)
        .map(|_| TcpStream::connect_timeout(&to, Duration::from_secs(2)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("connect")?;
    println!("held {count}");
    let ends: Vec<(Option<std::io::Error>, u64)> = std::thread::scope(|scope| {
        let waits: Vec<_> = streams
            .into_iter()
            .map(|mut stream| {
                scope.spawn(move || {
                    let mut buf = [0u8; 256];
                    let end = loop {
                        match std::io::Read::read(&mut stream, &mut buf) {
                            Ok(0) => break None,
                            Ok(_) => continue,
                            Err(err) => break Some(err),
                        }
                    };
                    (end, sandbox::monotonic_ns())
                })
            })
            .collect();
        waits.into_iter().map(|w| w.join().expect("reader thread")).collect()
    });
    for (end, _) in &ends {
        match end {
            Some(err) => println!("ended: {err}"),
            None => println!("ended: eof"),
        }
    }
    let aborted = ends.iter().filter(|(e, _)| e.is_some()).count();
    let last = ends.iter().map(|(_, at)| *at).max().unwrap_or(0);
    println!("last ended at monotonic_ns={last}");
    println!("ended aborted={aborted} eof={}", ends.len() - aborted);
    Ok(())
}
