//! Finding a Pod's network namespace from its UID: a process of the Pod sits in a
//! cgroup whose path names the UID (`…/pod<uid>/…` with cgroupfs, or
//! `…-pod<uid_with_underscores>.slice/…` with systemd), and `/proc/<pid>/ns/net` is
//! its namespace. Needs the host's PID namespace (`hostPID: true`).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::discovery::Enrollee;

/// How often `/proc` is scanned at most while some Pod is not found yet.
const SCAN_INTERVAL: Duration = Duration::from_millis(500);

pub struct Finder {
    proc_root: PathBuf,
    found: HashMap<String, PathBuf>,
    last_scan: Option<Instant>,
}

impl Finder {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self { proc_root: proc_root.into(), found: HashMap::new(), last_scan: None }
    }

    /// The namespaces of the Pods with these UIDs that have a process now; the others
    /// are looked for again on a later call. Forgets Pods not asked about.
    pub fn enrollees<'a>(&mut self, uids: impl IntoIterator<Item = &'a str>) -> Vec<Enrollee> {
        let uids: Vec<&str> = uids.into_iter().collect();
        // A cached process that exited (a container restart), or whose PID another
        // process now has, is looked for again.
        self.found.retain(|uid, path| uids.contains(&uid.as_str()) && still_the_pods(path, uid));
        let missing: Vec<&str> =
            uids.iter().copied().filter(|uid| !self.found.contains_key(*uid)).collect();
        let due = self.last_scan.is_none_or(|at| at.elapsed() >= SCAN_INTERVAL);
        if !missing.is_empty() && due {
            self.last_scan = Some(Instant::now());
            self.found.extend(scan(&self.proc_root, &missing));
        }
        let mut found: Vec<Enrollee> = uids
            .iter()
            .filter_map(|uid| {
                let path = self.found.get(*uid)?.clone();
                Some(Enrollee { path, pod_uid: Some(uid.to_string()) })
            })
            .collect();
        found.sort();
        found.dedup_by(|a, b| a.path == b.path);
        found
    }
}

/// Whether the process whose namespace file is `ns_path` (`/proc/PID/ns/net`) is in
/// the cgroup of the Pod with `uid`.
pub fn still_the_pods(ns_path: &Path, uid: &str) -> bool {
    let Some(proc_dir) = ns_path.parent().and_then(Path::parent) else { return false };
    std::fs::read_to_string(proc_dir.join("cgroup")).is_ok_and(|cgroups| names_pod(&cgroups, uid))
}

/// Whether a process's cgroup paths name the Pod with `uid` (cgroupfs or systemd).
fn names_pod(cgroups: &str, uid: &str) -> bool {
    names(cgroups, &format!("pod{uid}")) || names(cgroups, &format!("pod{}", uid.replace('-', "_")))
}

/// For each UID with a process, the lowest such PID's namespace (the Pod's sandbox
/// process starts first and lives longest).
fn scan(proc_root: &Path, uids: &[&str]) -> HashMap<String, PathBuf> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return HashMap::new();
    };
    let mut pids: Vec<u32> =
        entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    let mut found = HashMap::new();
    for pid in pids {
        let Ok(cgroups) = std::fs::read_to_string(proc_root.join(format!("{pid}/cgroup"))) else {
            continue;
        };
        for uid in uids {
            if !found.contains_key(*uid) && names_pod(&cgroups, uid) {
                found.insert(uid.to_string(), proc_root.join(format!("{pid}/ns/net")));
            }
        }
        if found.len() == uids.len() {
            break;
        }
    }
    found
}

/// Whether `pattern` is a whole word of the cgroup path (so `pod1` does not match
/// `pod12`).
fn names(cgroups: &str, pattern: &str) -> bool {
    cgroups.match_indices(pattern).any(|(at, _)| {
        let after = cgroups[at + pattern.len()..].chars().next();
        after.is_none_or(|c| matches!(c, '/' | '.' | '\n'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(entries: &[(u32, &str)]) -> tempdir::Dir {
        let dir = tempdir::Dir::new();
        for (pid, cgroup) in entries {
            let p = dir.0.join(pid.to_string());
            std::fs::create_dir_all(p.join("ns")).unwrap();
            std::fs::write(p.join("cgroup"), cgroup).unwrap();
            std::fs::write(p.join("ns/net"), "").unwrap();
        }
        dir
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "sockeye-netns-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
                let _ = std::fs::remove_dir_all(&path);
                std::fs::create_dir_all(&path).unwrap();
                Self(path)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn finds_pods_by_cgroupfs_and_systemd_paths() {
        let proc = fake_proc(&[
            (1, "0::/init.scope\n"),
            (40, "0::/kubepods/besteffort/podaaaa-1/c1\n"),
            (41, "0::/kubepods/besteffort/podaaaa-1/c2\n"),
            (50, "0::/kubepods.slice/kubepods-pod bbbb_2.slice/x\n"),
            (51, "0::/kubepods.slice/kubepods-podbbbb_2.slice/cri-containerd-1.scope\n"),
            (60, "0::/kubepods/podaaaa-12/c\n"),
        ]);
        let mut finder = Finder::new(&proc.0);
        let paths = paths(finder.enrollees(["aaaa-1", "bbbb-2", "cccc-3"]));
        assert_eq!(paths, [proc.0.join("40/ns/net"), proc.0.join("51/ns/net")]);
    }

    fn paths(enrollees: Vec<Enrollee>) -> Vec<PathBuf> {
        enrollees.into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn a_pid_taken_by_a_process_outside_the_pod_is_forgotten() {
        let proc = fake_proc(&[(40, "0::/kubepods/podu1/c\n")]);
        let mut finder = Finder::new(&proc.0);
        let found = finder.enrollees(["u1"]);
        assert_eq!(found[0].pod_uid.as_deref(), Some("u1"));
        // The Pod's process exits and a host process gets its PID.
        std::fs::write(proc.0.join("40/cgroup"), "0::/system.slice/sshd.service\n").unwrap();
        finder.last_scan = None;
        assert!(finder.enrollees(["u1"]).is_empty(), "the host process is not the Pod");
    }

    #[test]
    fn a_pod_whose_process_exited_is_looked_for_again() {
        let proc = fake_proc(&[(40, "0::/kubepods/podu1/c\n")]);
        let mut finder = Finder::new(&proc.0);
        assert_eq!(paths(finder.enrollees(["u1"])), [proc.0.join("40/ns/net")]);
        std::fs::remove_dir_all(proc.0.join("40")).unwrap();
        std::fs::create_dir_all(proc.0.join("41/ns")).unwrap();
        std::fs::write(proc.0.join("41/cgroup"), "0::/kubepods/podu1/c\n").unwrap();
        std::fs::write(proc.0.join("41/ns/net"), "").unwrap();
        finder.last_scan = None;
        assert_eq!(paths(finder.enrollees(["u1"])), [proc.0.join("41/ns/net")]);
    }
}
