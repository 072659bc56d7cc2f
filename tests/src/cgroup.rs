//! The test cgroup: where the agent attaches its programs and every sandbox process runs.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    pub fn create(root: &Path, name: &str) -> anyhow::Result<Self> {
        let path = root.join(name);
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(err) = remove(&self.path) {
            eprintln!("sandbox: {err:#}");
        }
    }
}

/// Kills every process in the cgroup and removes it, with the cgroups below it.
pub fn remove(path: &Path) -> anyhow::Result<()> {
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    for child in std::fs::read_dir(path).into_iter().flatten().flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            remove(&child.path())?;
        }
    }
    // rmdir fails with EBUSY until the killed processes are reaped.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(err) if std::time::Instant::now() >= deadline => {
                return Err(err).with_context(|| format!("removing cgroup {}", path.display()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
