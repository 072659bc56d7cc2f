//! The kernel's connect counts turned into news: what happened to the connects it sent
//! straight to each endpoint since the last look. Pure.

use std::{collections::HashMap, net::SocketAddr};

use proxy_common::lb::ConnectStats;

use crate::datapath::KernelConnects;

/// Connects to one endpoint of one service, new since the last look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct News {
    pub vip: SocketAddr,
    pub endpoint: SocketAddr,
    pub established: u64,
    pub failed: u64,
}

/// The totals of the last look.
#[derive(Debug, Default)]
pub struct Tally {
    seen: HashMap<(SocketAddr, SocketAddr), ConnectStats>,
}

impl Tally {
    /// What `totals` add to the last look. An entry the kernel dropped is forgotten; one
    /// whose counts went down was dropped and made again, and counts from zero.
    pub fn update(&mut self, totals: Vec<KernelConnects>) -> Vec<News> {
        let mut news = Vec::new();
        let mut seen = HashMap::with_capacity(totals.len());
        for ((vip, endpoint), now) in totals {
            let before = self.seen.get(&(vip, endpoint)).copied().unwrap_or_default();
            let since = |now: u64, before: u64| if now >= before { now - before } else { now };
            let (established, failed) =
                (since(now.established, before.established), since(now.failed, before.failed));
            if established > 0 || failed > 0 {
                news.push(News { vip, endpoint, established, failed });
            }
            seen.insert((vip, endpoint), now);
        }
        self.seen = seen;
        news
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(endpoint: &str, established: u64, failed: u64) -> KernelConnects {
        let vip = "10.96.0.10:80".parse().unwrap();
        let stats = ConnectStats { picked: established + failed, established, failed };
        ((vip, endpoint.parse().unwrap()), stats)
    }

    #[test]
    fn only_what_is_new_since_the_last_look_is_news() {
        let mut tally = Tally::default();
        let first = tally.update(vec![entry("10.10.0.3:80", 5, 0), entry("10.10.0.4:80", 0, 0)]);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].established, first[0].failed), (5, 0));
        assert!(tally.update(vec![entry("10.10.0.3:80", 5, 0)]).is_empty(), "nothing new");
        let later = tally.update(vec![entry("10.10.0.3:80", 6, 3)]);
        assert_eq!(
            (later[0].endpoint.to_string().as_str(), later[0].established, later[0].failed),
            ("10.10.0.3:80", 1, 3)
        );
    }

    #[test]
    fn a_dropped_entry_made_again_counts_from_zero() {
        let mut tally = Tally::default();
        tally.update(vec![entry("10.10.0.3:80", 50, 2)]);
        tally.update(vec![]);
        let again = tally.update(vec![entry("10.10.0.3:80", 1, 1)]);
        assert_eq!((again[0].established, again[0].failed), (1, 1), "forgotten when dropped");
        let lower = tally.update(vec![entry("10.10.0.3:80", 0, 1)]);
        assert!(lower.is_empty(), "{lower:?}");
        let remade = tally.update(vec![entry("10.10.0.3:80", 2, 0)]);
        assert_eq!((remade[0].established, remade[0].failed), (2, 0));
    }
}
