//! What the agent currently believes: services and their endpoints.

mod services;

pub use services::{Service, ServiceTable};
