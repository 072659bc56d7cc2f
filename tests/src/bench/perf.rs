//! The `perf` tool (linux-perf), run beside a round of load: the system calls a proxy
//! makes, counted over exactly the round, and a sampled profile of one process. Each
//! returns an error when perf is missing or cannot attach; the suite then leaves that
//! measurement out and says why.

use std::{
    fs::File,
    io::{ErrorKind, Read as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

const SYSCALL_EVENT: &str = "raw_syscalls:sys_enter";
/// How long perf may take to attach, or to answer a command.
const PERF_ANSWER: Duration = Duration::from_secs(10);

/// `perf stat` counting the system calls of some processes, attached with its events
/// off and switched on and off through its control FIFO, so the count covers the
/// round and nothing around it.
pub struct SyscallCount {
    perf: Child,
    control: File,
    ack: File,
    scratch: Scratch,
}

impl SyscallCount {
    /// Attaches to `pids` (every thread they have now) and starts counting.
    pub fn start(pids: &[u32]) -> anyhow::Result<Self> {
        let scratch = Scratch::new("syscalls")?;
        let (control, ack) = (scratch.path("control"), scratch.path("ack"));
        let status =
            Command::new("mkfifo").arg(&control).arg(&ack).status().context("running mkfifo")?;
        if !status.success() {
            bail!("mkfifo {}: {status}", control.display());
        }
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let perf = Command::new("perf")
            .args(["stat", "-e", SYSCALL_EVENT, "-x", ",", "--delay", "-1", "--control"])
            .arg(format!("fifo:{},{}", control.display(), ack.display()))
            .arg("-o")
            .arg(scratch.path("counts"))
            .args(["-p", &pids.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(scratch.path("perf.log"))?)
            .spawn()
            .context("starting perf (linux-perf)")?;
        // Read and write, as perf opens them: neither open waits for the other side.
        let open = |path: &Path| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
        };
        let mut count = Self { perf, control: open(&control)?, ack: open(&ack)?, scratch };
        count.command("enable")?;
        Ok(count)
    }

    /// Stops counting: the system calls entered since [`SyscallCount::start`].
    pub fn stop(mut self) -> anyhow::Result<u64> {
        self.command("disable")?;
        crate::sys::kill(self.perf.id(), libc::SIGINT)?;
        self.perf.wait()?;
        let counts = std::fs::read_to_string(self.scratch.path("counts"))?;
        let line = counts.lines().find(|l| l.contains(SYSCALL_EVENT));
        line.and_then(|l| l.split(',').next()?.parse().ok())
            .with_context(|| format!("no count of {SYSCALL_EVENT} in perf's output: {counts}"))
    }

    /// Sends `word` to perf and waits for its acknowledgement (`ack\n`, and a NUL).
    fn command(&mut self, word: &str) -> anyhow::Result<()> {
        writeln!(self.control, "{word}")?;
        let (perf, ack) = (&mut self.perf, &mut self.ack);
        let mut answer = Vec::new();
        let acked = crate::wait_for(&format!("perf to {word} its counters"), PERF_ANSWER, || {
            let mut buf = [0; 64];
            match ack.read(&mut buf) {
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                Err(err) => return Some(Err(err.into())),
            }
            if answer.windows(4).any(|w| w == b"ack\n") {
                return Some(Ok(()));
            }
            match perf.try_wait() {
                Ok(Some(status)) => Some(Err(anyhow::anyhow!("perf stat exited: {status}"))),
                _ => None,
            }
        });
        acked.and_then(|answer| answer).with_context(|| self.scratch.log())
    }
}

impl Drop for SyscallCount {
    fn drop(&mut self) {
        let _ = self.perf.kill();
        let _ = self.perf.wait();
    }
}

/// Samples `pid` at 999 Hz for `duration`, with call stacks unwound from DWARF (32 KiB
/// of stack copied a sample: async Rust keeps big futures on it): `perf script`'s text
/// (one block a sample: a header line, then its frames, leaf first). The recording
/// itself is kept in a scratch folder and deleted.
pub fn record(pid: u32, duration: Duration) -> anyhow::Result<String> {
    let scratch = Scratch::new("profile")?;
    let data = scratch.path("perf.data");
    let mut perf = Command::new("perf")
        .args(["record", "-F", "999", "--call-graph", "dwarf,32768", "-o"])
        .arg(&data)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(scratch.path("perf.log"))?)
        .spawn()
        .context("starting perf record (linux-perf)")?;
    std::thread::sleep(duration);
    crate::sys::kill(perf.id(), libc::SIGINT)?;
    let status = perf.wait()?;
    if !data.is_file() {
        bail!("perf record ({status}) wrote nothing: {}", scratch.log());
    }
    let script = Command::new("perf")
        .arg("script")
        .arg("-i")
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .context("running perf script")?;
    if !script.status.success() {
        bail!("perf script: {}", String::from_utf8_lossy(&script.stderr));
    }
    Ok(String::from_utf8_lossy(&script.stdout).into_owned())
}

/// A folder under the system's temporary one, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("sockeye-bench-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// What perf said on stderr.
    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.path("perf.log")).unwrap_or_default();
        format!("perf said: {}", log.trim())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
