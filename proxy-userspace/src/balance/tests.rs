use std::{collections::HashMap, net::SocketAddr};

use super::*;
use crate::state::Lifecycle;

fn endpoints(n: usize) -> EndpointSet {
    let all = (0..n)
        .map(|i| {
            let addr: SocketAddr = format!("10.10.0.{}:80", i + 2).parse().unwrap();
            Endpoint::new(addr, Lifecycle::Ready)
        })
        .collect();
    EndpointSet::new(all)
}

#[test]
fn peak_ewma_jumps_up_and_decays_down() {
    assert_eq!(pewma::update(1_000, 0, 5_000), 5_000, "a slower sample is taken at once");
    assert_eq!(pewma::update(5_000, 0, 1_000), 5_000, "no time passed: no decay");
    let decay = pewma::DECAY.as_nanos() as u64;
    let one_tau = pewma::update(5_000, decay, 1_000);
    assert!((2_400..2_500).contains(&one_tau), "{one_tau}: 1 + 4 × e^-1");
    assert!(pewma::update(5_000, decay * 20, 1_000) < 1_001);
}

#[test]
fn equal_endpoints_share_requests_evenly() {
    let set = endpoints(3);
    let mut counts: HashMap<SocketAddr, u32> = HashMap::new();
    let mut in_flight = Vec::new();
    for i in 0..3000 {
        let e = P2c.pick(&set, &[]).unwrap();
        e.load.outstanding.fetch_add(1, Ordering::Relaxed);
        *counts.entry(e.addr).or_default() += 1;
        in_flight.push(e);
        // Requests finish a few picks later, as under steady load.
        if i % 4 == 3 {
            for e in in_flight.drain(..) {
                e.load.outstanding.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
    for (addr, n) in counts {
        assert!((850..=1150).contains(&n), "{addr} got {n}");
    }
}

#[test]
fn a_slow_endpoint_gets_less_traffic() {
    let set = endpoints(3);
    pewma::observe(&set.ready[0].load, std::time::Duration::from_millis(50));
    for e in &set.ready[1..] {
        pewma::observe(&e.load, std::time::Duration::from_millis(1));
    }
    let slow = (0..3000).filter(|_| P2c.pick(&set, &[]).unwrap().addr == set.ready[0].addr).count();
    assert!(slow < 100, "the slow endpoint is picked only when paired with itself: {slow}");
}

#[test]
fn tried_endpoints_are_skipped_until_none_is_left() {
    let set = endpoints(2);
    let first = P2c.pick(&set, &[]).unwrap();
    let second = P2c.pick(&set, std::slice::from_ref(&first)).unwrap();
    assert!(!Arc::ptr_eq(&first, &second));
    assert!(P2c.pick(&set, &[first, second]).is_none());
    assert!(P2c.pick(&endpoints(0), &[]).is_none());
}
