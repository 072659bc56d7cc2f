//! One agent per cgroup. Two agents attached to the same cgroup with different pin
//! directories would both report ready while the kernel steers to only one of them,
//! and to which one would flip on every restart. So the agent that serves a cgroup
//! holds a claim on it: an abstract unix socket named after the cgroup (gone the
//! moment the process is), which answers who holds it. A second agent with another
//! `--bpffs` refuses to start and names the first; a successor with the same
//! `--bpffs` takes the claim over at the hand-off.

use std::{
    io::{self, Read as _},
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            fs::MetadataExt as _,
            net::{SocketAddr as UnixAddr, UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::io::AsyncWriteExt as _;
use tracing::debug;

/// How long a successor waits for its predecessor to let go of the claim.
const HANDOFF_PATIENCE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "--cgroup {cgroup}: another sockeye agent serves it ({holder}); stop that one, or \
         start this one with its --bpffs to take over from it"
    )]
    Held { cgroup: PathBuf, holder: String },
    #[error("--cgroup {cgroup}")]
    Io {
        cgroup: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// This agent's claim on a cgroup, held until dropped.
pub struct Claim(tokio::task::JoinHandle<()>);

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Claim {
    /// Claims `cgroup` for the agent pinning under `pin_dir`. Must run inside a tokio
    /// runtime.
    pub fn take(cgroup: &Path, pin_dir: &Path) -> Result<Self, ClaimError> {
        let io = |source| ClaimError::Io { cgroup: cgroup.into(), source };
        let address = address(cgroup).map_err(io)?;
        let listener = match UnixListener::bind_addr(&address) {
            Ok(listener) => listener,
            Err(err) if err.kind() == io::ErrorKind::AddrInUse => {
                let holder = holder(&address).unwrap_or_else(|err| format!("unknown: {err}"));
                return Err(ClaimError::Held { cgroup: cgroup.into(), holder });
            }
            Err(err) => return Err(io(err)),
        };
        listener.set_nonblocking(true).map_err(io)?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(io)?;
        let answer = format!("pid {}, --bpffs {}", std::process::id(), pin_dir.display());
        Ok(Self(tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                if let Err(err) = stream.write_all(answer.as_bytes()).await {
                    debug!("answering a claim question: {err}");
                }
            }
        })))
    }

    /// Claims `cgroup` as the successor of the agent that holds it and is letting go.
    pub async fn take_over(cgroup: &Path, pin_dir: &Path) -> Result<Self, ClaimError> {
        let deadline = tokio::time::Instant::now() + HANDOFF_PATIENCE;
        loop {
            match Self::take(cgroup, pin_dir) {
                Err(ClaimError::Held { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                result => return result,
            }
        }
    }
}

/// The abstract socket address of `cgroup`'s claim: its device and inode.
fn address(cgroup: &Path) -> io::Result<UnixAddr> {
    let meta = std::fs::metadata(cgroup)?;
    UnixAddr::from_abstract_name(format!("sockeye-cgroup:{}:{}", meta.dev(), meta.ino()))
}

/// What the holder of a claim says about itself.
fn holder(address: &UnixAddr) -> io::Result<String> {
    let mut stream = UnixStream::connect_addr(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two workers: the claim's holder answers while the test waits on it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_claim_is_refused_and_names_the_first_until_it_lets_go() {
        let cgroup = std::env::temp_dir().join(format!("sockeye-claim-{}", std::process::id()));
        std::fs::create_dir_all(&cgroup).unwrap();
        let first = Claim::take(&cgroup, Path::new("/sys/fs/bpf/first")).unwrap();
        let err = Claim::take(&cgroup, Path::new("/sys/fs/bpf/second")).err().unwrap();
        let message = err.to_string();
        assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
        assert!(message.contains("--bpffs /sys/fs/bpf/first"), "{message}");

        let letting_go = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(first);
        });
        let second = Claim::take_over(&cgroup, Path::new("/sys/fs/bpf/first")).await;
        assert!(second.is_ok(), "the successor gets the claim once it is let go");
        letting_go.await.unwrap();
        std::fs::remove_dir(&cgroup).unwrap();
    }
}
