//! sockeye, the node agent: steers enrolled Pods' connections to service VIPs into
//! itself (eBPF), and forwards them to live endpoints.
#![deny(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod balance;
pub mod config;
pub mod datapath;
pub mod discovery;
pub mod eviction;
pub mod handoff;
pub mod health;
pub mod kernel_lb;
pub mod metrics;
pub mod outlier;
pub mod proxy;
pub mod retry;
pub mod state;
mod sys;
pub mod upstream;
