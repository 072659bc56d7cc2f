//! Names of everything a sandbox creates, and the sweep of what crashed runs left.
//!
//! Every name is `sk-<pid>-<n>[-<role>]`: the creating process's id makes leftovers
//! recognisable (their process is gone) without touching a concurrent run's sandbox.

use std::{
    path::{Path, PathBuf},
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
};

use crate::sys;

pub const NETNS_DIR: &str = "/var/run/netns";
pub const BPFFS: &str = "/sys/fs/bpf";

/// A fresh sandbox id, `sk-<pid>-<n>`, unique within this machine.
pub fn sandbox_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("sk-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Removes, once per process, whatever sandboxes of dead processes left behind.
pub fn sweep_once(cgroup_root: &Path) {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        let mut removed = Vec::new();
        for dir in [Path::new(NETNS_DIR), Path::new(BPFFS), cgroup_root, &std::env::temp_dir()] {
            for path in leftovers(dir) {
                if remove(dir, &path) {
                    removed.push(path.display().to_string());
                }
            }
        }
        if !removed.is_empty() {
            eprintln!("sandbox: removed leftovers of crashed runs: {}", removed.join(", "));
        }
    });
}

/// Entries named `sk-<pid>-…` whose process is gone.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            owner(name).is_some_and(|pid| !sys::alive(pid))
        })
        .collect()
}

/// The pid in a name of the form `sk-<pid>-…`.
fn owner(name: &str) -> Option<u32> {
    name.strip_prefix("sk-")?.split('-').next()?.parse().ok()
}

fn remove(dir: &Path, path: &Path) -> bool {
    let result = if dir == Path::new(NETNS_DIR) {
        crate::netns::delete(path.file_name().and_then(|n| n.to_str()).unwrap_or(""))
    } else if dir == Path::new(BPFFS) || dir == std::env::temp_dir() {
        std::fs::remove_dir_all(path).map_err(Into::into)
    } else {
        crate::cgroup::remove(path)
    };
    match result {
        Ok(()) => true,
        Err(err) => {
            eprintln!("sandbox: cannot remove leftover {}: {err:#}", path.display());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_from_sandbox_names_only() {
        assert_eq!(owner("sk-1234-0-node"), Some(1234));
        assert_eq!(owner("sk-1234-7"), Some(1234));
        assert_eq!(owner("sockeye"), None);
        assert_eq!(owner("sk-abc-0"), None);
        let id = sandbox_id();
        assert_eq!(owner(&id), Some(std::process::id()));
    }
}
