//! Network namespace cookies: the identity `bpf_get_netns_cookie` returns in the
//! kernel, read from userspace through a socket opened inside the namespace.

use std::{fs::File, io, path::Path};

use crate::sys;

/// The cookie of the network namespace bound at `path` (`/var/run/netns/x`,
/// `/proc/PID/ns/net`). Runs on a short-lived thread, because entering a namespace
/// moves the calling thread.
pub fn cookie(path: &Path) -> io::Result<u64> {
    cookie_of(&File::open(path)?)
}

/// The cookie of the network namespace `ns` is open on; EINVAL if it is not one.
pub fn cookie_of(ns: &File) -> io::Result<u64> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                sys::enter_netns(ns)?;
                sys::own_netns_cookie()
            })
            .join()
    })
    .map_err(|_| io::Error::other("netns cookie thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_namespace_cookie_is_stable_and_matches_its_file() {
        let own = sys::own_netns_cookie().unwrap();
        assert_ne!(own, 0);
        assert_eq!(cookie(Path::new("/proc/self/ns/net")).unwrap(), own);
        assert!(cookie(Path::new("/nonexistent/netns")).is_err());
        assert!(cookie(Path::new("/proc/self/ns/uts")).is_err(), "not a network namespace");
    }
}
