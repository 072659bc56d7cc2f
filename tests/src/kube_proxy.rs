//! The kube-proxy stand-in: nftables DNAT in the node namespace from each service VIP
//! to its endpoints, round robin, the way kube-proxy's nftables mode does it. It is
//! both the baseline and the path connections take when the agent is not steering.

use std::net::SocketAddr;

use crate::{Netns, ServiceSpec};

const TABLE: &str = "sk_kube_proxy";

/// Atomically replaces the DNAT rules with rules for `services`.
pub fn apply(node: &Netns, services: &[ServiceSpec]) -> anyhow::Result<()> {
    node.exec("nft", &["-f", "-"], &render(services))
}

fn render(services: &[ServiceSpec]) -> String {
    let mut rules = String::new();
    for service in services {
        rules.push_str(&rule(service));
    }
    format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\n\
         table inet {TABLE} {{\n  chain prerouting {{\n    \
         type nat hook prerouting priority dstnat; policy accept;\n{rules}  }}\n}}\n"
    )
}

fn rule(service: &ServiceSpec) -> String {
    let (family, vip) = match service.vip {
        SocketAddr::V4(v4) => ("ip", v4.ip().to_string()),
        SocketAddr::V6(v6) => ("ip6", v6.ip().to_string()),
    };
    let matches = format!("{family} daddr {vip} tcp dport {}", service.vip.port());
    let endpoints: Vec<&SocketAddr> =
        service.endpoints.iter().filter(|e| e.is_ipv4() == service.vip.is_ipv4()).collect();
    if endpoints.is_empty() {
        return format!("    {matches} reject with tcp reset\n");
    }
    let map: Vec<String> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{i} : {} . {}", e.ip(), e.port()))
        .collect();
    format!(
        "    {matches} dnat {family} to numgen inc mod {} map {{ {} }}\n",
        endpoints.len(),
        map.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_round_robin_dnat_per_family() {
        let spec = |vip: &str, endpoints: &[&str]| {
            let endpoints = endpoints.iter().map(|e| e.parse().unwrap()).collect();
            ServiceSpec::tcp("s", vip.parse().unwrap(), endpoints)
        };
        let text = render(&[
            spec("10.96.0.10:7000", &["10.10.0.3:7000", "10.10.0.4:7001"]),
            spec("[fd96::10]:7000", &["[fd10::3]:7000"]),
            spec("10.96.0.11:80", &[]),
        ]);
        assert!(text.contains(
            "ip daddr 10.96.0.10 tcp dport 7000 dnat ip to numgen inc mod 2 \
             map { 0 : 10.10.0.3 . 7000, 1 : 10.10.0.4 . 7001 }"
        ));
        assert!(text.contains("ip6 daddr fd96::10 tcp dport 7000 dnat ip6 to numgen inc mod 1"));
        assert!(text.contains("ip daddr 10.96.0.11 tcp dport 80 reject with tcp reset"));
    }
}
