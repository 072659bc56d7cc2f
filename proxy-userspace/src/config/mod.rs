//! The static configuration file (`sockeye run --config FILE`).
//!
//! Parsing is strict (unknown fields are errors) and validation names the field at
//! fault, so a broken file is rejected with a message that says what to fix.

pub mod duration;
pub mod policy;
mod validate;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

pub use policy::{Policy, RetryOn};
pub use validate::check_admin;

/// Where redirected connections arrive unless the file says otherwise.
pub const DEFAULT_LISTEN: &str = "169.254.77.1:15001";
/// The admin endpoint (`/healthz`, `/readyz`) unless the file says otherwise.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:15090";

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// IPv4 address where the kernel sends steered connections.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// IPv6 address for steered connections to IPv6 VIPs; none by default.
    #[serde(default)]
    pub listen6: Option<SocketAddr>,
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub enroll: Enroll,
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

/// Caps on connections: past them a new connection is refused (reset) and counted in
/// `sockeye_connection_limit_hits_total`. Read at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Downstream connections served at once, over all services.
    pub max_connections: usize,
    /// Opaque-TCP connections to one endpoint at once; a new connection goes to
    /// another endpoint, or is refused when every endpoint is at its cap.
    pub max_connections_per_endpoint: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_connections: 100_000, max_connections_per_endpoint: 10_000 }
    }
}

/// Network namespaces whose connects to service VIPs are steered to the agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enroll {
    #[serde(default)]
    pub netns: Vec<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    /// The virtual address clients connect to (a ClusterIP and port).
    pub vip: SocketAddr,
    #[serde(default)]
    pub protocol: Protocol,
    /// For `protocol: tcp`: `relay` through the agent, or `kernel` (connects go
    /// straight to a Ready endpoint).
    #[serde(default)]
    pub tcp_mode: TcpMode,
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
    #[serde(default)]
    pub health: policy::HealthPolicy,
    #[serde(default)]
    pub outlier: policy::OutlierPolicy,
    #[serde(default)]
    pub retry: policy::RetryPolicy,
    #[serde(default)]
    pub timeout: policy::TimeoutPolicy,
}

impl ServiceConfig {
    /// The service's `health`, `outlier`, `retry` and `timeout` blocks together.
    pub fn policy(&self) -> Policy {
        Policy {
            health: self.health.clone(),
            outlier: self.outlier.clone(),
            retry: self.retry.clone(),
            timeout: self.timeout.clone(),
            tcp_mode: self.tcp_mode,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Grpc,
    Http,
    #[default]
    Tcp,
}

impl Protocol {
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

/// How a `tcp` service's connections reach its endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcpMode {
    /// The kernel steers each connection to the agent, which picks an endpoint,
    /// retries a failed connect on another, caps connections and counts them.
    #[default]
    Relay,
    /// The kernel sends each connect straight to one of the Ready endpoints the agent
    /// keeps in a kernel map: nothing on the path, no retry.
    Kernel,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("config file {path}: {field}: {problem}")]
    Invalid { path: PathBuf, field: String, problem: String },
}

impl Config {
    /// The proxy's listen addresses: IPv4, then IPv6 if set.
    pub fn proxy_addrs(&self) -> Vec<SocketAddr> {
        [Some(self.listen), self.listen6].into_iter().flatten().collect()
    }

    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(path, &text)
    }

    /// Reads node settings (listeners, admin) for `--kube`, where services and
    /// enrolled Pods come from the API server and so must not be in the file.
    pub fn load_node_settings(path: &Path) -> Result<Self, ConfigError> {
        let config = Self::load(path)?;
        let from_api = |field: &str| ConfigError::Invalid {
            path: path.into(),
            field: field.into(),
            problem: "comes from the Kubernetes API with --kube; remove it from the file".into(),
        };
        if !config.services.is_empty() {
            return Err(from_api("services"));
        }
        if !config.enroll.netns.is_empty() {
            return Err(from_api("enroll"));
        }
        Ok(config)
    }

    /// Node settings with every default, for `--kube` without a file.
    pub fn node_defaults() -> Self {
        Self {
            listen: default_listen(),
            listen6: None,
            admin: default_admin(),
            limits: Limits::default(),
            enroll: Enroll::default(),
            services: Vec::new(),
        }
    }

    /// Parses and validates `text`; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Config = serde_yaml_ng::from_str(text)
            .map_err(|source| ConfigError::Parse { path: path.into(), source })?;
        config.validate().map_err(|(field, problem)| ConfigError::Invalid {
            path: path.into(),
            field,
            problem,
        })?;
        Ok(config)
    }
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("a valid default")
}

fn default_admin() -> SocketAddr {
    DEFAULT_ADMIN.parse().expect("a valid default")
}
