//! `sk-pod`: the programs sandbox Pods run.
//!
//!   sk-pod tcp-echo --port P --name NAME
//!       Listens on [::]:P (IPv4 and IPv6). Each connection first receives
//!       "NAME CLIENT-IP\n", then has its bytes echoed back.
//!   sk-pod tcp-probe --to ADDR --count N [--concurrency C] [--timeout-ms T]
//!       Opens N connections to ADDR (C at a time), checks each against an echo
//!       backend, and prints a JSON report (sandbox::probe::Report) as its last line.
//!   sk-pod grpc-server --port P --name NAME [--refuse-ms X] [--not-serving-ms Y]
//!                      [--no-watch true]
//!       A gRPC backend: sockeye.test.Echo and grpc.health.v1, steered from stdin
//!       (see sandbox::grpc::backend).
//!   sk-pod grpc-load --to ADDR --rate R --duration-ms D [--timeout-ms T]
//!                    [--payload-bytes N] [--max-in-flight M]
//!       Open-loop unary calls over one HTTP/2 connection; prints a JSON report
//!       (sandbox::grpc::load::LoadReport) as its last line.
//!   sk-pod tcp-hold --to ADDR --count N
//!       Opens N connections to an echo backend and holds them until each ends; prints
//!       `held N`, then a line per ended connection, `last ended at monotonic_ns=T`,
//!       then `ended aborted=A eof=E`.
//!   sk-pod tcp-junk --to ADDR [--hold-ms H]
//!       Opens misbehaving connections (garbage after the HTTP/2 preface, a half
//!       close, silence) and holds them open.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context as _, bail};
use sandbox::{grpc, probe::Report};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let flags = flags(args)?;
    let get = |name: &str| flags.get(name).with_context(|| format!("--{name} is required"));
    match command.as_str() {
        "tcp-echo" => echo(get("port")?.parse()?, get("name")?),
        "tcp-probe" => {
            let to: SocketAddr = get("to")?.parse()?;
            let count = get("count")?.parse()?;
            let concurrency = flags.get("concurrency").map_or(Ok(1), |c| c.parse())?;
            let timeout = flags.get("timeout-ms").map_or(Ok(2000), |t| t.parse())?;
            let report = probe(to, count, concurrency, Duration::from_millis(timeout));
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
            let report = runtime()?.block_on(grpc::load::run(grpc::load::Options {
                to: get("to")?.parse()?,
                rate: get("rate")?.parse()?,
                duration: millis(&flags, "duration-ms", 10_000)?,
                timeout: millis(&flags, "timeout-ms", 2_000)?,
                payload: flags.get("payload-bytes").map_or(Ok(32), |v| v.parse())?,
                max_in_flight: flags.get("max-in-flight").map_or(Ok(1000), |v| v.parse())?,
            }))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        "tcp-hold" => hold(get("to")?.parse()?, get("count")?.parse()?),
        "tcp-junk" => junk(get("to")?.parse()?, millis(&flags, "hold-ms", 2_000)?),
        _ => bail!(
            "usage: sk-pod tcp-echo | tcp-probe | grpc-server | grpc-load | tcp-hold | tcp-junk \
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

fn probe(to: SocketAddr, count: usize, concurrency: usize, timeout: Duration) -> Report {
    let report = Mutex::new(Report::default());
    let concurrency = concurrency.clamp(1, count.max(1));
    std::thread::scope(|scope| {
        for worker in 0..concurrency {
            let report = &report;
            scope.spawn(move || {
                for _ in (worker..count).step_by(concurrency) {
                    let outcome = check_once(to, timeout);
                    let mut report = report.lock().unwrap();
                    match outcome {
                        Ok((backend, peer)) => {
                            report.ok += 1;
                            *report.backends.entry(backend).or_default() += 1;
                            *report.peers.entry(peer).or_default() += 1;
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

/// One connection: read the backend's greeting, check one echoed line.
fn check_once(to: SocketAddr, timeout: Duration) -> anyhow::Result<(String, String)> {
    let mut stream = TcpStream::connect_timeout(&to, timeout).context("connect")?;
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
    Ok((backend.to_string(), peer.to_string()))
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

/// Holds `count` connections open until the peer or the kernel ends each.
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
