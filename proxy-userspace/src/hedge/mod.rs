//! Hedging: when a call has waited longer than most calls to its service take, the
//! same call goes to a second endpoint and whichever answers first wins. The decisions
//! here are pure; the request path's part that races the tries is
//! `proxy::call::hedge`.
//!
//! - which calls: [`covers`];
//! - after how long: [`LatencyWindow`], a percentile of the service's recent calls
//!   with a floor;
//! - how many: the extra tries the retry budget allows hedges
//!   (`retry::RetryBudget::try_hedge`), and `hedge.max_attempts` at once.

pub mod delay;

pub use delay::LatencyWindow;
use http::Method;

use crate::config::policy::HedgePolicy;

/// What decides whether a call may be hedged.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub grpc: bool,
    pub method: &'a Method,
    /// The request's path: a gRPC call's `/package.Service/Method`.
    pub path: &'a str,
    /// An Upgrade or CONNECT, which would become two tunnels.
    pub tunnel: bool,
}

/// Whether `policy` hedges calls like `target`: hedging is on, the path is listed
/// (or no list is given), and the call is safe to send twice at once: any gRPC call
/// and an HTTP request whose method is idempotent, never a tunnel. Whether the call's
/// request is complete when the hedge is due is checked then.
pub fn covers(policy: &HedgePolicy, target: &Target<'_>) -> bool {
    policy.enabled
        && !target.tunnel
        && (target.grpc || target.method.is_idempotent())
        && policy.lists(target.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target<'a>(grpc: bool, method: &'a Method, path: &'a str) -> Target<'a> {
        Target { grpc, method, path, tunnel: false }
    }

    #[test]
    fn only_calls_safe_to_send_twice_are_covered() {
        let on = HedgePolicy { enabled: true, ..HedgePolicy::default() };
        let (get, post, put) = (Method::GET, Method::POST, Method::PUT);
        assert!(covers(&on, &target(true, &post, "/shop.Catalog/GetItem")), "gRPC");
        assert!(covers(&on, &target(false, &get, "/items")));
        assert!(covers(&on, &target(false, &put, "/items/7")), "PUT is idempotent");
        assert!(!covers(&on, &target(false, &post, "/items")), "POST never");
        assert!(!covers(&on, &target(false, &Method::PATCH, "/items/7")));
        let upgrade = Target { tunnel: true, ..target(false, &get, "/ws") };
        assert!(!covers(&on, &upgrade), "a WebSocket upgrade never");
        let off = HedgePolicy::default();
        assert!(!covers(&off, &target(true, &post, "/shop.Catalog/GetItem")), "off by default");
    }

    #[test]
    fn a_list_narrows_what_is_covered() {
        let listed = HedgePolicy {
            enabled: true,
            paths: vec!["/shop.Catalog/GetItem".into(), "/api/*".into()],
            ..HedgePolicy::default()
        };
        let post = Method::POST;
        assert!(covers(&listed, &target(true, &post, "/shop.Catalog/GetItem")));
        assert!(!covers(&listed, &target(true, &post, "/shop.Cart/Add")), "not listed");
        assert!(covers(&listed, &target(false, &Method::GET, "/api/items")));
        assert!(!covers(&listed, &target(false, &post, "/api/items")), "listed, but POST");
    }
}
