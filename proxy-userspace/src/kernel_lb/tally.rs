//! The kernel's connect counts turned into news: how many of the connects it sent
//! straight to each endpoint were established since the last look. (Failures reach the
//! agent one by one, as they happen.) Pure.

use std::{collections::HashMap, net::SocketAddr};

use crate::datapath::KernelConnects;

/// Connections to one endpoint of one service established since the last look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct News {
    pub vip: SocketAddr,
    pub endpoint: SocketAddr,
    pub established: u64,
}

/// The established totals of the last look.
#[derive(Debug, Default)]
pub struct Tally {
    seen: HashMap<(SocketAddr, SocketAddr), u64>,
}

impl Tally {
    /// What `totals` add to the last look. An entry the kernel dropped is forgotten; one
    /// whose counts went down was dropped and made again, and counts from zero.
    pub fn update(&mut self, totals: Vec<KernelConnects>) -> Vec<News> {
        let mut news = Vec::new();
        let mut seen = HashMap::with_capacity(totals.len());
        for ((vip, endpoint), stats) in totals {
            let now = stats.established;
            let before = self.seen.get(&(vip, endpoint)).copied().unwrap_or_default();
            let established = now.checked_sub(before).unwrap_or(now);
            if established > 0 {
                news.push(News { vip, endpoint, established });
            }
            seen.insert((vip, endpoint), now);
        }
        self.seen = seen;
        news
    }
}

#[cfg(test)]
mod tests {
    use proxy_common::lb::ConnectStats;

    use super::*;

    fn entry(endpoint: &str, established: u64, failed: u64) -> KernelConnects {
        let vip = "10.96.0.10:80".parse().unwrap();
        let stats = ConnectStats { picked: established + failed, established, failed };
        ((vip, endpoint.parse().unwrap()), stats)
    }

    #[test]
    fn only_connections_established_since_the_last_look_are_news() {
        let mut tally = Tally::default();
        let first = tally.update(vec![entry("10.10.0.3:80", 5, 0), entry("10.10.0.4:80", 0, 7)]);
        assert_eq!(first.len(), 1, "failures are not news here: {first:?}");
        assert_eq!(first[0].established, 5);
        assert!(tally.update(vec![entry("10.10.0.3:80", 5, 2)]).is_empty(), "nothing new");
        let later = tally.update(vec![entry("10.10.0.3:80", 6, 3)]);
        assert_eq!((later[0].endpoint, later[0].established), ("10.10.0.3:80".parse().unwrap(), 1));
    }

    #[test]
    fn a_dropped_entry_made_again_counts_from_zero() {
        let mut tally = Tally::default();
        tally.update(vec![entry("10.10.0.3:80", 50, 0)]);
        tally.update(vec![]);
        let again = tally.update(vec![entry("10.10.0.3:80", 1, 0)]);
        assert_eq!(again[0].established, 1, "forgotten when dropped");
        let lower = tally.update(vec![entry("10.10.0.3:80", 0, 0)]);
        assert!(lower.is_empty(), "{lower:?}");
        assert_eq!(tally.update(vec![entry("10.10.0.3:80", 2, 0)])[0].established, 2);
    }
}
