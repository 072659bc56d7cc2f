//! `sk-pod tcp-watch`: connections to an echo backend, held and watched one by one, so a
//! test sees which ended when and which still carry bytes.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{Mutex, atomic::AtomicU64, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// What became of one connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Open,
    Ended,
    /// Answered the check of this generation.
    Checked(u64),
}

pub fn run(to: SocketAddr, count: usize) -> anyhow::Result<()> {
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let stream = TcpStream::connect_timeout(&to, Duration::from_secs(2)).context("connect")?;
        let mut greeting = String::new();
        BufReader::new(stream.try_clone()?).read_line(&mut greeting).context("greeting")?;
        let backend = greeting.split_whitespace().next().context("no greeting")?.to_string();
        say(&format!("conn {i} {backend}"));
        conns.push((backend, stream));
    }
    say(&format!("held {count}"));
    let generation = AtomicU64::new(0);
    let fates = Mutex::new(vec![Fate::Open; count]);
    std::thread::scope(|scope| {
        for (i, (backend, stream)) in conns.into_iter().enumerate() {
            let (generation, fates) = (&generation, &fates);
            scope.spawn(move || watch(i, &backend, stream, generation, fates));
        }
        for line in std::io::stdin().lines() {
            if line.as_deref().is_ok_and(|l| l.trim() == "check") {
                let asked = generation.fetch_add(1, Ordering::SeqCst) + 1;
                wait_answers(&fates, asked);
                say("checked");
            }
        }
    });
    Ok(())
}

/// Waits (at most 5 s) until every connection has ended or answered check `asked`.
fn wait_answers(fates: &Mutex<Vec<Fate>>, asked: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let done = fates
            .lock()
            .unwrap()
            .iter()
            .all(|f| matches!(f, Fate::Ended) || *f == Fate::Checked(asked));
        if done {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn watch(
    i: usize,
    backend: &str,
    mut stream: TcpStream,
    generation: &AtomicU64,
    fates: &Mutex<Vec<Fate>>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut answered = 0;
    let mut buf = [0u8; 256];
    loop {
        let asked = generation.load(Ordering::SeqCst);
        if asked > answered {
            answered = asked;
            match echo_once(&mut stream) {
                Ok(()) => say(&format!("conn {i} {backend} alive")),
                Err(err) => say(&format!("conn {i} {backend} broken: {err:#}")),
            }
            fates.lock().unwrap()[i] = Fate::Checked(asked);
            continue;
        }
        let end = match stream.read(&mut buf) {
            Ok(0) => "eof".to_string(),
            Ok(_) => continue,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(err) => err.to_string(),
        };
        say(&format!("conn {i} {backend} ended: {end}"));
        fates.lock().unwrap()[i] = Fate::Ended;
        return;
    }
}

/// Sends a line and reads it back within 2 s.
fn echo_once(stream: &mut TcpStream) -> anyhow::Result<()> {
    stream.write_all(b"ping\n").context("send")?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !got.ends_with(b"\n") {
        anyhow::ensure!(Instant::now() < deadline, "no echo within 2 s");
        match stream.read(&mut buf) {
            Ok(0) => anyhow::bail!("eof"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(err) => return Err(err).context("echo"),
        }
    }
    anyhow::ensure!(got == b"ping\n", "bad echo {got:?}");
    Ok(())
}

/// One line on stdout, at once (the test reads the log as it grows).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
