//! What the kernel says a process has used, from `/proc`: CPU time (user and system),
//! context switches of its threads, and resident memory.

use std::io::ErrorKind;

use anyhow::Context as _;

#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Usage {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// CPU time in the process's own code (utime), and in the kernel for it (stime).
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// Context switches of the threads alive now: voluntary (the thread waited, for I/O
    /// or a lock) and nonvoluntary (the scheduler took the CPU away).
    pub voluntary_switches: u64,
    pub nonvoluntary_switches: u64,
    /// Resident set size now, and its peak, in KiB.
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

impl Usage {
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line; 12 and 13 after `) `. They
        // count every thread of the process, the ones that have exited included.
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        let per_second = crate::sys::clock_ticks_per_second() as f64;
        let (user_seconds, system_seconds) =
            (ticks(11) as f64 / per_second, ticks(12) as f64 / per_second);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let (voluntary_switches, nonvoluntary_switches) = thread_switches(pid)?;
        Ok(Self {
            cpu_seconds: user_seconds + system_seconds,
            user_seconds,
            system_seconds,
            voluntary_switches,
            nonvoluntary_switches,
            rss_kib: field(&status, "VmRSS:"),
            peak_rss_kib: field(&status, "VmHWM:"),
        })
    }

    /// The sum over `pids` (a proxy's processes: nginx's master and workers).
    pub fn of_all(pids: &[u32]) -> anyhow::Result<Self> {
        pids.iter().try_fold(Self::default(), |total, pid| Ok(total.plus(&Self::of(*pid)?)))
    }

    pub fn context_switches(&self) -> u64 {
        self.voluntary_switches + self.nonvoluntary_switches
    }

    fn plus(&self, other: &Self) -> Self {
        Self {
            cpu_seconds: self.cpu_seconds + other.cpu_seconds,
            user_seconds: self.user_seconds + other.user_seconds,
            system_seconds: self.system_seconds + other.system_seconds,
            voluntary_switches: self.voluntary_switches + other.voluntary_switches,
            nonvoluntary_switches: self.nonvoluntary_switches + other.nonvoluntary_switches,
            rss_kib: self.rss_kib + other.rss_kib,
            peak_rss_kib: self.peak_rss_kib + other.peak_rss_kib,
        }
    }
}

/// Voluntary and nonvoluntary context switches summed over the threads of `pid`
/// (`/proc/<pid>/status` alone gives only its main thread's). A thread that exits
/// takes its counts with it.
fn thread_switches(pid: u32) -> anyhow::Result<(u64, u64)> {
    let tasks = format!("/proc/{pid}/task");
    let (mut voluntary, mut nonvoluntary) = (0, 0);
    for task in std::fs::read_dir(&tasks).with_context(|| format!("listing {tasks}"))? {
        let status = match std::fs::read_to_string(task?.path().join("status")) {
            Ok(status) => status,
            // The thread exited since the listing.
            Err(err)
                if err.kind() == ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH) =>
            {
                continue;
            }
            Err(err) => return Err(err).with_context(|| format!("reading a status in {tasks}")),
        };
        voluntary += field(&status, "voluntary_ctxt_switches:");
        nonvoluntary += field(&status, "nonvoluntary_ctxt_switches:");
    }
    Ok((voluntary, nonvoluntary))
}

/// The number after `key` on its line of a `/proc` status file, 0 if absent.
fn field(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
