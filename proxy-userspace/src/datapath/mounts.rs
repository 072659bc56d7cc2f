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

/// `statfs` magic numbers (linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;

/// Fails unless `dir` (or, while it does not exist, its nearest existing parent) is on
/// a bpf filesystem. The filesystem itself is asked, so `..` cannot climb out of it.
pub fn require_bpffs(dir: &Path) -> Result<(), DatapathError> {
    let existing = dir.ancestors().find(|a| a.exists()).unwrap_or(dir);
    match crate::sys::fs_type(existing) {
        Ok(BPF_FS_MAGIC) => Ok(()),
        Ok(_) => Err(DatapathError::Flag {
            flag: "--bpffs",
            path: dir.into(),
            problem: "not on a bpf filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf` \
                      or pass a directory on one"
                .into(),
        }),
        Err(err) => Err(DatapathError::Flag {
            flag: "--bpffs",
            path: dir.into(),
            problem: format!("cannot tell its filesystem: {err}"),
        }),
    }
}

/// Fails unless `dir` is a directory of the cgroup v2 hierarchy.
pub fn require_cgroup2(dir: &Path) -> Result<(), DatapathError> {
    let problem = match crate::sys::fs_type(dir) {
        Ok(CGROUP2_SUPER_MAGIC) if dir.is_dir() => return Ok(()),
        Ok(_) => "not a cgroup v2 directory; pass one under the cgroup2 mount (see \
                  /proc/mounts), or leave --cgroup out to use its root"
            .to_string(),
        Err(err) => format!("{err}; pass an existing cgroup v2 directory"),
    };
    Err(DatapathError::Flag { flag: "--cgroup", path: dir.into(), problem })
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
