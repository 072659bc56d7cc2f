//! Static discovery: the config file, polled and hot-reloaded.
//!
//! Polling (rather than inotify) also follows Kubernetes ConfigMap volumes, which
//! swap a symlink. A poll reads the file only when its [`Stamp`] changed, so a big
//! file that holds still costs a `stat` a poll. An invalid new file is rejected with a
//! log line naming the problem, once per distinct content, and the last good config
//! stays in force.

use std::{
    hash::{BuildHasher as _, RandomState},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

use super::{Desired, Discovery};
use crate::config::{Config, ConfigError};

/// How often the file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

pub struct StaticFile {
    rx: watch::Receiver<Arc<Desired>>,
    reload: Arc<Notify>,
    rejected: watch::Receiver<u64>,
}

impl StaticFile {
    /// Loads `path` (an error if it is invalid) and starts watching it for changes.
    /// Returns the first config's settings too (without its services, which are in
    /// the desired state): its listen and admin addresses are fixed for the agent's
    /// lifetime.
    pub fn start(path: &Path, interval: Duration) -> Result<(Self, Config), ConfigError> {
        let (stamp, hasher) = (Stamp::of(path, SystemTime::now()), RandomState::new());
        let text = read(path)?;
        let config = Config::parse(path, &text)?;
        let (tx, rx) = watch::channel(Arc::new(Desired::from(&config)));
        let poller = Poller {
            path: path.to_owned(),
            first: config.without_services(),
            had_services: !config.services.is_empty(),
            last_stamp: stamp,
            last_hash: Some(hasher.hash_one(&text)),
            hasher,
        };
        let reload = Arc::new(Notify::new());
        let (rejections, rejected) = watch::channel(0);
        tokio::spawn(poller.run(tx, interval, reload.clone(), rejections));
        // The agent keeps the settings; the services live once, in the desired state.
        let settings = config.without_services();
        drop(config);
        crate::sys::release_free_memory();
        Ok((Self { rx, reload, rejected }, settings))
    }
}

impl Discovery for StaticFile {
    fn watch(&self) -> watch::Receiver<Arc<Desired>> {
        self.rx.clone()
    }

    fn reloads(&self) -> Option<Arc<Notify>> {
        Some(self.reload.clone())
    }

    fn rejections(&self) -> watch::Receiver<u64> {
        self.rejected.clone()
    }
}

/// What one look at the file found.
enum Checked {
    Same,
    Rejected,
    New(Desired),
}

struct Poller {
    path: PathBuf,
    /// The first config's settings read at start (its services are not kept: one
    /// copy of them lives in the desired state).
    first: Config,
    /// The last config taken.
    had_services: bool,
    hasher: RandomState,
    /// The file as last read, and a hash of its text (not the text: a big file would
    /// stay in memory twice).
    last_stamp: Option<Stamp>,
    last_hash: Option<u64>,
}

/// What changes when a file's content may have: another file (a ConfigMap's symlink
/// swapped), or a write (its size, its change time, which no one can set back). A
/// file changed in the last [`RACY`] has no stamp: a second write within the file
/// system's clock tick would leave the change time as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    changed: SystemTime,
}

/// How recent a change may be for the next poll to read the file regardless.
const RACY: Duration = Duration::from_secs(1);

impl Stamp {
    /// The stamp of the file `path` names (symlinks followed), if it settled by `now`.
    fn of(path: &Path, now: SystemTime) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        let since_epoch =
            Duration::new(meta.ctime().try_into().ok()?, meta.ctime_nsec().try_into().ok()?);
        let changed = SystemTime::UNIX_EPOCH + since_epoch;
        let settled = now.duration_since(changed).is_ok_and(|age| age > RACY);
        settled.then(|| Self { dev: meta.dev(), ino: meta.ino(), len: meta.len(), changed })
    }
}

impl Poller {
    async fn run(
        mut self,
        tx: watch::Sender<Arc<Desired>>,
        interval: Duration,
        now: Arc<Notify>,
        rejections: watch::Sender<u64>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !tx.is_closed() {
            tokio::select! {
                _ = ticker.tick() => {}
                () = now.notified() => (self.last_stamp, self.last_hash) = (None, None),
            }
            match self.check() {
                Checked::Same => {}
                Checked::Rejected => rejections.send_modify(|n| *n += 1),
                Checked::New(desired) => {
                    tx.send_if_modified(|current| {
                        let changed = **current != desired;
                        *current = Arc::new(desired);
                        changed
                    });
                }
            }
        }
    }

    /// Reads the file: the new desired state if it changed and is valid.
    fn check(&mut self) -> Checked {
        let stamp = Stamp::of(&self.path, SystemTime::now());
        if stamp.is_some() && stamp == self.last_stamp {
            return Checked::Same;
        }
        let text = match read(&self.path) {
            Ok(text) => text,
            Err(err) => {
                if self.last_hash.is_some() {
                    warn!("{}; keeping the last good config", crate::Chain(&err));
                }
                (self.last_stamp, self.last_hash) = (None, None);
                return Checked::Same;
            }
        };
        self.last_stamp = stamp;
        let hash = self.hasher.hash_one(&text);
        if self.last_hash == Some(hash) {
            return Checked::Same;
        }
        self.last_hash = Some(hash);
        let parsed = Config::parse(&self.path, &text).map_err(|e| crate::Chain(&e).to_string());
        match parsed.and_then(|config| self.not_emptied_by_accident(config, &text)) {
            Ok(config) => {
                self.warn_fixed_fields(&config);
                info!(
                    services = config.services.len(),
                    netns = config.enroll.netns.len(),
                    "config reloaded from {}",
                    self.path.display()
                );
                let desired = Desired::from(&config);
                self.had_services = !config.services.is_empty();
                Checked::New(desired)
            }
            Err(problem) => {
                error!("config reload rejected: {problem}; keeping the last good config");
                Checked::Rejected
            }
        }
    }

    /// Refuses a new file that would drop every service without saying so: one
    /// truncated before its `services` key.
    fn not_emptied_by_accident(&self, new: Config, text: &str) -> Result<Config, String> {
        let had = self.had_services;
        let says = crate::config::keys(text).iter().any(|k| k == "services");
        if had && new.services.is_empty() && !says {
            return Err(format!(
                "config file {}: no `services` key, which would remove every service (a \
                 truncated file?); write `services: []` to mean that",
                self.path.display()
            ));
        }
        Ok(new)
    }

    fn warn_fixed_fields(&self, new: &Config) {
        let first = &self.first;
        if (new.listen, new.listen6, new.admin) != (first.listen, first.listen6, first.admin) {
            warn!("listen, listen6 and admin changes take effect only when the agent restarts");
        }
        let fixed = |c: &Config| (c.limits, c.capacity, c.service_idle_timeout);
        if fixed(new) != fixed(first) {
            warn!(
                "limits, capacity and service_idle_timeout changes take effect only when the \
                 agent restarts"
            );
        }
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "services:\n- name: a\n  vip: 10.96.0.1:80\n  endpoints: [10.10.0.11:80]\n";
    const TWO: &str = "services:\n- name: a\n  vip: 10.96.0.1:80\n  endpoints: [10.10.0.12:80]\n";

    fn temp_file(text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sockeye-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:x}.yaml", rand_suffix()));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    }

    async fn next_poll() {
        tokio::time::sleep(POLL_INTERVAL + Duration::from_millis(1)).await;
    }

    fn endpoint(rx: &watch::Receiver<Arc<Desired>>) -> String {
        rx.borrow().services[0].endpoints[0].addr.to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_file_is_applied_and_an_invalid_one_is_not() {
        let path = temp_file(ONE);
        let (discovery, config) = StaticFile::start(&path, POLL_INTERVAL).unwrap();
        assert!(config.services.is_empty(), "the settings only: services are in the state");
        let mut rx = discovery.watch();
        assert_eq!(rx.borrow().services.len(), 1);
        assert_eq!(endpoint(&rx), "10.10.0.11:80");

        std::fs::write(&path, TWO).unwrap();
        next_poll().await;
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert_eq!(endpoint(&rx), "10.10.0.12:80");

        std::fs::write(&path, "services: [").unwrap();
        next_poll().await;
        assert!(!rx.has_changed().unwrap(), "an invalid file must not replace the config");
        assert_eq!(endpoint(&rx), "10.10.0.12:80");

        std::fs::remove_file(&path).unwrap();
        next_poll().await;
        assert!(!rx.has_changed().unwrap(), "a vanished file must not replace the config");

        std::fs::write(&path, ONE).unwrap();
        next_poll().await;
        assert_eq!(endpoint(&rx), "10.10.0.11:80");
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_or_truncated_file_keeps_the_config_and_an_explicit_empty_list_empties() {
        let path = temp_file(ONE);
        let (discovery, _) = StaticFile::start(&path, POLL_INTERVAL).unwrap();
        let mut rx = discovery.watch();
        let rejected = discovery.rejections();
        for accident in ["", "# just a comment\n", "listen: 169.254.77.1:15001\n"] {
            std::fs::write(&path, accident).unwrap();
            next_poll().await;
            assert!(!rx.has_changed().unwrap(), "{accident:?} must not replace the config");
            assert_eq!(rx.borrow().services.len(), 1);
        }
        assert_eq!(*rejected.borrow(), 3, "each rejection counted");
        std::fs::write(&path, "services: []\n").unwrap();
        next_poll().await;
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().services.is_empty(), "an explicit empty list empties");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_file_has_a_stamp_once_settled_and_a_write_or_a_swapped_link_changes_it() {
        let later = || SystemTime::now() + RACY * 2;
        let path = temp_file(ONE);
        assert_eq!(Stamp::of(&path, SystemTime::now()), None, "just written: no stamp");
        let stamp = Stamp::of(&path, later()).expect("settled");
        assert_eq!(Stamp::of(&path, later()), Some(stamp), "unchanged");

        // Past the file system's clock tick (a jiffy), which RACY covers in real use.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, TWO).unwrap();
        assert_eq!(ONE.len(), TWO.len());
        assert_ne!(Stamp::of(&path, later()), Some(stamp), "a write of the same size");

        let (link, other) = (path.with_extension("link"), temp_file(TWO));
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let before = Stamp::of(&link, later()).expect("settled");
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&other, &link).unwrap();
        assert_ne!(Stamp::of(&link, later()), Some(before), "the link names another file");
        for p in [&path, &link, &other] {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalid_first_file_is_an_error() {
        let path = temp_file("listen: nowhere");
        let err = StaticFile::start(&path, POLL_INTERVAL).err().expect("rejected");
        assert!(err.to_string().contains("is not valid"), "{err}");
        std::fs::write(&path, "\n").unwrap();
        let err = StaticFile::start(&path, POLL_INTERVAL).err().expect("rejected");
        assert!(err.to_string().contains("is empty"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
