//! Processes the sandbox starts inside a namespace and the test cgroup. Killed on drop.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::sys;

pub struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Proc {
    /// Starts `command` inside `netns` (and the cgroup, if given), its stdout and
    /// stderr going to `log`.
    pub fn spawn(
        name: &str,
        mut command: Command,
        netns: File,
        cgroup_procs: Option<File>,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        command.stdin(Stdio::piped()).stdout(out.try_clone()?).stderr(out);
        // Its own process group: a Ctrl-C at the terminal reaches only the caller, which
        // then tears the sandbox down in order.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        sys::spawn_inside(&mut command, netns, cgroup_procs);
        let mut child = command.spawn().with_context(|| format!("starting {name}: {command:?}"))?;
        let stdin = child.stdin.take();
        Ok(Self { name: name.into(), child, stdin, log: log.into() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Writes one line to the process's stdin (how `grpc-server` is steered).
    pub fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin is closed")?;
        writeln!(stdin, "{line}").with_context(|| format!("writing to {}", self.name))?;
        stdin.flush()?;
        Ok(())
    }

    /// How many descriptors the process has open.
    pub fn open_files(&self) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
    }

    /// Sends a signal (`libc::SIGTERM`, `SIGKILL`, `SIGSTOP`, `SIGCONT`, …).
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        sys::kill(self.pid(), signal).with_context(|| format!("signalling {}", self.name))
    }

    /// Waits for the process to exit, at most `timeout`; returns its exit code.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until a line of the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        crate::wait_for(&format!("{needle:?} in the log of {}", self.name), timeout, || {
            let file = File::open(&self.log).ok()?;
            BufReader::new(file).lines().map_while(Result::ok).find(|l| l.contains(needle))
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
