//! Finding the cgroup v2 hierarchy and checking for a bpf filesystem, from /proc/mounts.

use std::path::{Path, PathBuf};

use super::DatapathError;

const MOUNTS: &str = "/proc/mounts";

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` on most nodes,
/// `/sys/fs/cgroup/unified` on hybrid hosts).
pub fn cgroup2_root() -> Result<PathBuf, DatapathError> {
    mount_points("cgroup2")?.into_iter().next().ok_or_else(|| DatapathError::Setup {
        path: MOUNTS.into(),
        problem: "no cgroup2 filesystem is mounted; sockeye needs cgroup v2".into(),
    })
}

/// Fails unless `dir` lies on a mounted bpf filesystem.
pub fn require_bpffs(dir: &Path) -> Result<(), DatapathError> {
    let on_bpffs = mount_points("bpf")?.iter().any(|mount| dir.starts_with(mount));
    if on_bpffs {
        return Ok(());
    }
    Err(DatapathError::Setup {
        path: dir.into(),
        problem: "not on a bpf filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf` \
                  or pass --bpffs with a directory on one"
            .into(),
    })
}

fn mount_points(fs_type: &str) -> Result<Vec<PathBuf>, DatapathError> {
    let text = std::fs::read_to_string(MOUNTS).map_err(DatapathError::io(MOUNTS))?;
    Ok(parse(&text, fs_type))
}

fn parse(mounts: &str, fs_type: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_source, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == fs_type).then(|| PathBuf::from(point.replace("\\040", " ")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mount_points_by_type() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
                      bpf /sys/fs/bpf bpf rw 0 0\n";
        assert_eq!(parse(mounts, "cgroup2"), vec![PathBuf::from("/sys/fs/cgroup/unified")]);
        assert_eq!(parse(mounts, "bpf"), vec![PathBuf::from("/sys/fs/bpf")]);
        assert!(parse("garbage\n\n", "bpf").is_empty());
    }
}
