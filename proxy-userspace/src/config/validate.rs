//! Checks a parsed config for what serde cannot see: families, duplicates, ports.

use std::{collections::HashMap, net::SocketAddr};

use super::{Capacity, Config};

/// A field path (`services[1].vip`) and what is wrong with it.
pub type Problem = (String, String);

/// The admin endpoint binds to one address (loopback or the node's IP), never to every
/// interface, and needs a port.
pub fn check_admin(admin: SocketAddr) -> Result<(), String> {
    if admin.ip().is_unspecified() {
        return Err(format!(
            "{admin} would expose the admin endpoint on every interface; use 127.0.0.1 or \
             this node's IP"
        ));
    }
    if admin.port() == 0 {
        return Err(format!("{admin} needs a port"));
    }
    Ok(())
}

impl super::ServiceConfig {
    /// Kernel mode rewrites a connect to an endpoint in the kernel: only for opaque
    /// TCP, and only to endpoints of the VIP's family.
    fn check_tcp_mode(&self) -> Result<(), String> {
        if self.tcp_mode != super::TcpMode::Kernel {
            return Ok(());
        }
        if self.protocol != super::Protocol::Tcp {
            return Err(format!("kernel needs protocol: tcp, not {}", self.protocol.name()));
        }
        match self.endpoints.iter().find(|e| e.is_ipv4() != self.vip.is_ipv4()) {
            Some(e) => Err(format!("kernel: endpoint {e} is not of the VIP's family")),
            None => Ok(()),
        }
    }
}

impl super::ServiceConfig {
    /// Hedging sends calls twice at once: only calls the agent sees one by one.
    fn check_hedge(&self) -> Result<(), String> {
        if self.hedge.enabled && self.protocol == super::Protocol::Tcp {
            return Err("enabled needs protocol: grpc or http (tcp has no calls to hedge)".into());
        }
        Ok(())
    }
}

impl Capacity {
    /// Whether `services` VIPs and `pods` namespaces fit the kernel's maps; the
    /// problem names the limit to raise.
    pub fn fits(&self, services: usize, pods: usize) -> Result<(), Problem> {
        for (name, wanted, room) in
            [("services", services, self.services), ("pods", pods, self.pods)]
        {
            if wanted > room as usize {
                return Err((
                    format!("capacity.{name}"),
                    format!(
                        "{wanted} {name} do not fit the kernel map of {room}; raise \
                         capacity.{name} (takes effect when the agent restarts)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    pub(super) fn validate(&self) -> Result<(), Problem> {
        let problem = |field: &str, text: String| Err((field.to_string(), text));
        if !self.listen.is_ipv4() || self.listen.port() == 0 {
            return problem(
                "listen",
                format!("{} must be an IPv4 address with a port", self.listen),
            );
        }
        if let Some(listen6) = self.listen6
            && (!listen6.is_ipv6() || listen6.port() == 0)
        {
            return problem("listen6", format!("{listen6} must be an IPv6 address with a port"));
        }
        if let Err(why) = check_admin(self.admin) {
            return problem("admin", why);
        }
        if self.service_idle_timeout.is_zero() {
            return problem("service_idle_timeout", "must be more than 0".into());
        }
        if self.limits.max_connections == 0 {
            return problem("limits.max_connections", "must be at least 1".into());
        }
        if self
            .limits
            .max_connections_per_pod
            .is_some_and(|n| n == 0 || n > self.limits.max_connections)
        {
            return problem(
                "limits.max_connections_per_pod",
                "must be between 1 and limits.max_connections".into(),
            );
        }
        if self.limits.max_connections_per_endpoint == 0 {
            return problem("limits.max_connections_per_endpoint", "must be at least 1".into());
        }
        for (name, value) in self.capacity.named() {
            if value == 0 || value > Capacity::MAX {
                return problem(
                    &format!("capacity.{name}"),
                    format!("{value} must be between 1 and {}", Capacity::MAX),
                );
            }
        }
        self.capacity.fits(self.services.len(), self.enroll.netns.len())?;
        let mut names = HashMap::new();
        let mut vips = HashMap::new();
        for (i, service) in self.services.iter().enumerate() {
            let field = |name: &str| format!("services[{i}].{name}");
            if service.name.trim().is_empty() {
                return problem(&field("name"), "must not be empty".into());
            }
            if let Some(first) = names.insert(service.name.as_str(), i) {
                return problem(
                    &field("name"),
                    format!("\"{}\" is also the name of services[{first}]", service.name),
                );
            }
            if service.vip.port() == 0 {
                return problem(&field("vip"), format!("{} needs a port", service.vip));
            }
            if service.vip.is_ipv6() && self.listen6.is_none() {
                return problem(
                    &field("vip"),
                    format!("{} is IPv6 but no listen6 address is set", service.vip),
                );
            }
            if let Some(first) = vips.insert(service.vip, i) {
                return problem(
                    &field("vip"),
                    format!("{} is also the VIP of services[{first}]", service.vip),
                );
            }
            if let Err((sub, problem)) = service.policy().validate() {
                return Err((field(&sub), problem));
            }
            if let Err(why) = service.check_tcp_mode() {
                return problem(&field("tcp_mode"), why);
            }
            if let Err(why) = service.check_hedge() {
                return problem(&field("hedge.enabled"), why);
            }
            for (j, endpoint) in service.endpoints.iter().enumerate() {
                if endpoint.port() == 0 || endpoint.ip().is_unspecified() {
                    return problem(
                        &format!("services[{i}].endpoints[{j}]"),
                        format!("{endpoint} is not a reachable address and port"),
                    );
                }
                if self.proxy_addrs().contains(endpoint) || *endpoint == self.admin {
                    return problem(
                        &format!("services[{i}].endpoints[{j}]"),
                        format!("{endpoint} is the agent's own address, not a backend"),
                    );
                }
                if let Some(k) = self.services.iter().position(|s| s.vip == *endpoint) {
                    return problem(
                        &format!("services[{i}].endpoints[{j}]"),
                        format!("{endpoint} is the VIP of services[{k}], not a backend"),
                    );
                }
                if service.endpoints[..j].contains(endpoint) {
                    return problem(
                        &format!("services[{i}].endpoints[{j}]"),
                        format!("{endpoint} is listed twice"),
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError, Protocol};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.yaml"), text)
    }

    fn problem(text: &str) -> String {
        let err = parse(text).expect_err("the config should be rejected");
        crate::Chain(&err).to_string()
    }

    #[test]
    fn the_design_example_parses_with_defaults() {
        let config = parse(
            "listen: 169.254.77.1:15001\n\
             enroll:\n  netns: [/var/run/netns/client]\n\
             services:\n\
             - name: greeter\n  vip: 10.96.0.10:50051\n  protocol: grpc\n  \
               endpoints: [10.10.0.11:50051, 10.10.0.12:50051]\n",
        )
        .unwrap();
        assert_eq!(config.admin.to_string(), "127.0.0.1:15090");
        assert_eq!(config.enroll.netns.len(), 1);
        assert_eq!(config.services[0].protocol, Protocol::Grpc);
        assert_eq!(config.services[0].endpoints.len(), 2);
        assert_eq!(config.services[0].timeout.drain, std::time::Duration::from_secs(10));
        assert_eq!(parse("{}").unwrap().services.len(), 0);
    }

    #[test]
    fn the_admin_endpoint_never_binds_every_interface() {
        assert!(problem("admin: 0.0.0.0:15090").contains("admin: 0.0.0.0:15090 would expose"));
        assert!(problem("admin: '[::]:15090'").contains("would expose"));
        assert!(problem("admin: 127.0.0.1:0").contains("needs a port"));
        assert_eq!(parse("admin: 10.0.0.5:15090").unwrap().admin.to_string(), "10.0.0.5:15090");
    }

    #[test]
    fn connection_limits_have_safe_defaults_and_refuse_zero() {
        let limits = parse("{}").unwrap().limits;
        assert_eq!((limits.max_connections, limits.per_pod()), (100_000, 4_096));
        let small = parse("limits:\n  max_connections: 10\n").unwrap().limits;
        assert_eq!(small.per_pod(), 5, "by default half of a small global cap");
        let set = parse("limits:\n  max_connections: 10\n  max_connections_per_pod: 8\n");
        assert_eq!(set.unwrap().limits.per_pod(), 8, "a cap set is kept");
        assert!(
            problem("limits:\n  max_connections: 10\n  max_connections_per_pod: 11\n")
                .contains("limits.max_connections_per_pod")
        );
        assert_eq!(limits.max_connections_per_endpoint, 10_000);
        let set = parse("limits:\n  max_connections: 5\n").unwrap().limits;
        assert_eq!((set.max_connections, set.max_connections_per_endpoint), (5, 10_000));
        assert!(problem("limits:\n  max_connections: 0\n").contains("limits.max_connections"));
        assert!(problem("limits:\n  max_connection: 5\n").contains("unknown field"));
    }

    #[test]
    fn errors_name_the_field_at_fault() {
        let svc = |body: &str| format!("services:\n- name: a\n  vip: 10.96.0.1:80\n{body}");
        assert!(
            problem("listen: '[fd77::1]:15001'")
                .contains("listen: [fd77::1]:15001 must be an IPv4")
        );
        assert!(
            problem("services:\n- name: ' '\n  vip: 10.0.0.1:1\n").contains("services[0].name")
        );
        assert!(
            problem(&format!("{}- name: a\n  vip: 10.96.0.2:80\n", svc("")))
                .contains("services[1].name: \"a\" is also the name of services[0]")
        );
        assert!(
            problem(&format!("{}- name: b\n  vip: 10.96.0.1:80\n", svc("")))
                .contains("services[1].vip: 10.96.0.1:80 is also the VIP of services[0]")
        );
        assert!(problem("services:\n- name: a\n  vip: 10.96.0.1:0\n").contains("services[0].vip"));
        assert!(
            problem("services:\n- name: a\n  vip: '[fd96::1]:80'\n").contains("no listen6 address")
        );
        assert!(
            problem(&svc("  endpoints: [10.0.0.1:80, 10.0.0.1:80]\n"))
                .contains("services[0].endpoints[1]: 10.0.0.1:80 is listed twice")
        );
        assert!(problem(&svc("  endpoints: [0.0.0.0:80]\n")).contains("services[0].endpoints[0]"));
        assert!(
            problem(&svc("  endpoints: [169.254.77.1:15001]\n")).contains(
                "services[0].endpoints[0]: 169.254.77.1:15001 is the agent's own address"
            )
        );
        assert!(
            problem(&svc("  endpoints: [10.96.0.1:80]\n"))
                .contains("10.96.0.1:80 is the VIP of services[0]")
        );
    }

    #[test]
    fn kernel_mode_is_for_tcp_services_with_endpoints_of_the_vips_family() {
        let svc = |body: &str| format!("services:\n- name: a\n  vip: 10.96.0.1:80\n{body}");
        let config = parse(&svc("  tcp_mode: kernel\n  endpoints: [10.0.0.1:80]\n")).unwrap();
        assert_eq!(config.services[0].policy().tcp_mode, crate::config::TcpMode::Kernel);
        assert_eq!(parse(&svc("")).unwrap().services[0].tcp_mode, crate::config::TcpMode::Relay);
        assert!(
            problem(&svc("  protocol: grpc\n  tcp_mode: kernel\n"))
                .contains("services[0].tcp_mode: kernel needs protocol: tcp, not grpc")
        );
        assert!(
            problem(&svc("  tcp_mode: kernel\n  endpoints: ['[fd10::1]:80']\n"))
                .contains("services[0].tcp_mode: kernel: endpoint [fd10::1]:80 is not of the VIP")
        );
        assert!(problem(&svc("  tcp_mode: bypass\n")).contains("bypass"));
    }

    #[test]
    fn syntax_errors_and_unknown_fields_are_rejected_with_the_file_name() {
        assert!(problem("services: [").starts_with("config file test.yaml is not valid"));
        assert!(problem("listne: 1.2.3.4:5").contains("unknown field `listne`"));
        assert!(
            problem("services:\n- name: a\n  vip: 10.96.0.1:80\n  protocol: udp\n").contains("udp")
        );
        assert!(problem("services:\n- name: a\n  vip: not-an-address\n").contains("services"));
        let svc = "services:\n- name: a\n  vip: 10.96.0.1:80\n";
        assert!(problem(&format!("{svc}  timeout: {{drain: 10}}\n")).contains("needs a unit"));
        assert!(
            problem(&format!("{svc}  timeout: {{drian: 1s}}\n")).contains("unknown field `drian`")
        );
    }

    #[test]
    fn policy_blocks_parse_with_envoy_names_and_bad_values_name_the_field() {
        let svc = "services:\n- name: a\n  vip: 10.96.0.1:80\n";
        let config = parse(&format!(
            "{svc}  health: {{interval: 250ms, unhealthy_threshold: 1, grpc_service_name: greeter}}\n  \
             outlier: {{consecutive_gateway_failure: 3, base_ejection_time: 1s}}\n  \
             retry: {{attempts: 2, retry_on: [unavailable, deadline-exceeded]}}\n  \
             timeout: {{request: 3s}}\n  \
             hedge: {{enabled: true, paths: [/a.B/C], percentile: 99.9, max_extra_load: 5%}}\n  \
             protocol: grpc\n"
        ))
        .unwrap();
        let policy = config.services[0].policy();
        assert_eq!(policy.health.interval, std::time::Duration::from_millis(250));
        assert_eq!(policy.health.grpc_service_name, "greeter");
        assert_eq!(policy.health.healthy_threshold, 2, "defaults fill the rest");
        assert_eq!(policy.outlier.consecutive_gateway_failure, 3);
        assert_eq!(policy.outlier.consecutive_local_origin_failure, 3);
        assert_eq!(policy.retry.attempts, 2);
        assert!(policy.retry.allows(crate::config::RetryOn::DeadlineExceeded));
        assert_eq!(policy.timeout.request, std::time::Duration::from_secs(3));
        assert!(policy.hedge.enabled);
        assert_eq!(policy.hedge.percentile.to_string(), "99.9%");
        assert_eq!(policy.hedge.max_extra_load.to_string(), "5%");
        assert_eq!(policy.hedge.max_attempts, 2, "defaults fill the rest");
        assert!(!parse(svc).unwrap().services[0].policy().hedge.enabled, "off by default");

        for (block, field) in [
            ("health: {interval: 0s}", "services[0].health.interval"),
            ("health: {healthy_threshold: 0}", "services[0].health.healthy_threshold"),
            ("outlier: {max_ejection_percent: 101}", "services[0].outlier.max_ejection_percent"),
            ("outlier: {base_ejection_time: 10m}", "services[0].outlier.max_ejection_time"),
            ("retry: {attempts: 0}", "services[0].retry.attempts"),
            ("retry: {budget_percent: 200}", "services[0].retry.budget_percent"),
            ("timeout: {request: 0ms}", "services[0].timeout.request"),
            ("hedge: {percentile: 20}", "services[0].hedge.percentile"),
            ("hedge: {max_attempts: 1}", "services[0].hedge.max_attempts"),
            ("hedge: {enabled: true}", "services[0].hedge.enabled: enabled needs protocol"),
        ] {
            let message = problem(&format!("{svc}  {block}\n"));
            assert!(message.contains(field), "{block}: {message}");
        }
        assert!(
            problem(&format!("{svc}  retry: {{retry_on: [sometimes]}}\n")).contains("sometimes")
        );
    }
}
