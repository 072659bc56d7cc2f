//! Discovery: what services and endpoints exist, and which network namespaces are
//! enrolled. The static file is one source; the Kubernetes API is another.

pub mod static_file;

use std::{path::PathBuf, sync::Arc};

use tokio::sync::watch;

use crate::config::{Config, ServiceConfig};

/// Everything discovery knows at one moment. The agent makes it so.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub services: Vec<ServiceConfig>,
    /// Network namespace files (`/var/run/netns/x`, `/proc/PID/ns/net`) to enroll.
    pub enroll: Vec<PathBuf>,
}

impl From<&Config> for Desired {
    fn from(config: &Config) -> Self {
        Self { services: config.services.clone(), enroll: config.enroll.netns.clone() }
    }
}

/// A source of [`Desired`] states.
pub trait Discovery: Send + Sync + 'static {
    /// The latest state; the receiver sees every change.
    fn watch(&self) -> watch::Receiver<Arc<Desired>>;
}

/// A fixed state, for tests of what reacts to discovery.
pub struct Fixed(pub watch::Sender<Arc<Desired>>);

impl Discovery for Fixed {
    fn watch(&self) -> watch::Receiver<Arc<Desired>> {
        self.0.subscribe()
    }
}
