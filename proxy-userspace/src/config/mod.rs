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
/// How long a service stays started with no connection unless the file says otherwise.
pub const DEFAULT_SERVICE_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

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
    pub capacity: Capacity,
    /// A service's balancer, upstream connections and health checks start with the
    /// first connection a Pod on this node makes to it, and stop after this long
    /// with no connection open (its VIP stays steered). Read at start. Default 5m.
    #[serde(default = "default_service_idle", deserialize_with = "duration::deserialize")]
    pub service_idle_timeout: std::time::Duration,
    #[serde(default)]
    pub enroll: Enroll,
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

/// Caps on connections, counted in `sockeye_connection_limit_hits_total`. Read at
/// start. At the agent's or a Pod's cap the kernel sends that Pod's (or every Pod's)
/// new connects to kube-proxy's path until there is room again (fail open).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Downstream connections served at once, over all services.
    pub max_connections: usize,
    /// Downstream connections from one Pod (network namespace) at once, so one Pod
    /// cannot take every connection the agent has. Default: 4,096, or half of
    /// `max_connections` if that is less.
    pub max_connections_per_pod: Option<usize>,
    /// Opaque-TCP connections to one endpoint at once; a new connection goes to
    /// another endpoint, or is refused when every endpoint is at its cap.
    pub max_connections_per_endpoint: u32,
}

impl Limits {
    /// The per-Pod cap in force: the one set, or the default.
    pub fn per_pod(&self) -> usize {
        self.max_connections_per_pod.unwrap_or((self.max_connections / 2).clamp(1, 4_096))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_connections_per_pod: None,
            max_connections_per_endpoint: 10_000,
        }
    }
}

/// How many entries the kernel's maps hold. Read at start (a change takes effect at
/// the next start, when the maps are made anew); a config that would not fit is
/// refused as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capacity {
    /// Service VIP:port pairs the kernel steers.
    pub services: u32,
    /// Enrolled network namespaces (Pods).
    pub pods: u32,
    /// Connects between a Pod's `connect()` and the agent's `accept()` (each of the
    /// two original-destination maps; least recently used entries are dropped first).
    pub pending_connects: u32,
    /// Sockets of accelerated connections (two per connection, with `--accel on`).
    pub accelerated_sockets: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        use proxy_common::map_sizes;
        Self {
            services: map_sizes::VIPS,
            pods: map_sizes::ENROLLED,
            pending_connects: map_sizes::ORIG_DST,
            accelerated_sockets: map_sizes::SOCKS,
        }
    }
}

impl Capacity {
    /// The largest capacity accepted for any map.
    pub const MAX: u32 = 1 << 22;

    /// Each map's name in the config and metrics, and its capacity.
    pub fn named(&self) -> [(&'static str, u32); 4] {
        [
            ("services", self.services),
            ("pods", self.pods),
            ("pending_connects", self.pending_connects),
            ("accelerated_sockets", self.accelerated_sockets),
        ]
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
    #[serde(default)]
    pub hedge: policy::HedgePolicy,
}

impl ServiceConfig {
    /// The service's `health`, `outlier`, `retry`, `timeout` and `hedge` blocks together.
    pub fn policy(&self) -> Policy {
        Policy {
            health: self.health.clone(),
            outlier: self.outlier.clone(),
            retry: self.retry.clone(),
            timeout: self.timeout.clone(),
            hedge: self.hedge.clone(),
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
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("config file {path}: {field}: {problem}")]
    Invalid { path: PathBuf, field: String, problem: String },
    #[error("config file {path} is empty; a node with nothing configured says `services: []`")]
    Empty { path: PathBuf },
}

/// The top-level keys a config file sets, to tell `services: []` from no `services`.
pub fn keys(text: &str) -> Vec<String> {
    let Ok(serde_yaml_ng::Value::Mapping(map)) = serde_yaml_ng::from_str(text) else {
        return Vec::new();
    };
    map.keys().filter_map(|k| k.as_str().map(str::to_string)).collect()
}

impl Config {
    /// The settings alone: no services, no enrolled namespaces.
    pub fn without_services(&self) -> Self {
        Self {
            listen: self.listen,
            listen6: self.listen6,
            admin: self.admin,
            limits: self.limits,
            capacity: self.capacity,
            service_idle_timeout: self.service_idle_timeout,
            enroll: Enroll::default(),
            services: Vec::new(),
        }
    }

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
            capacity: Capacity::default(),
            service_idle_timeout: DEFAULT_SERVICE_IDLE,
            enroll: Enroll::default(),
            services: Vec::new(),
        }
    }

    /// Parses and validates `text`; `path` only names the file in errors. An empty
    /// file (an editor that truncated it before writing) is not a config.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let parse = |source| ConfigError::Parse { path: path.into(), source };
        let document: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(parse)?;
        if document.is_null() {
            return Err(ConfigError::Empty { path: path.into() });
        }
        // From the text again, not the value: serde_yaml_ng's errors then say where.
        let config: Config = serde_yaml_ng::from_str(text).map_err(parse)?;
        config.validate().map_err(|(field, problem)| ConfigError::Invalid {
            path: path.into(),
            field,
            problem,
        })?;
        Ok(config)
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([169, 254, 77, 1], 15001))
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15090))
}

fn default_service_idle() -> std::time::Duration {
    DEFAULT_SERVICE_IDLE
}

#[cfg(test)]
mod default_tests {
    #[test]
    fn the_defaults_say_what_the_documented_strings_say() {
        assert_eq!(super::default_listen().to_string(), super::DEFAULT_LISTEN);
        assert_eq!(super::default_admin().to_string(), super::DEFAULT_ADMIN);
    }
}
