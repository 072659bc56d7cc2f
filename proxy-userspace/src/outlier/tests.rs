use std::time::Duration;

use super::*;
use crate::state::LocalOriginFailure;

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 10, 0, n], 80))
}

const UNAVAILABLE: Outcome = Outcome::Response { status: 503, latency: Duration::from_millis(1) };
const OK: Outcome = Outcome::Response { status: 200, latency: Duration::from_millis(1) };
const REFUSED: Outcome = Outcome::LocalOrigin(LocalOriginFailure::ConnectRefused);

fn policy() -> OutlierPolicy {
    OutlierPolicy { consecutive_gateway_failure: 3, ..OutlierPolicy::default() }
}

#[test]
fn consecutive_gateway_errors_eject_and_a_success_resets_the_count() {
    let (mut d, now, p) = (Detector::default(), Instant::now(), policy());
    assert_eq!(d.observe(addr(1), &UNAVAILABLE, 3, now, &p), None);
    assert_eq!(d.observe(addr(1), &UNAVAILABLE, 3, now, &p), None);
    assert_eq!(d.observe(addr(1), &OK, 3, now, &p), None, "a success resets");
    assert_eq!(d.observe(addr(1), &UNAVAILABLE, 3, now, &p), None);
    assert_eq!(d.observe(addr(1), &UNAVAILABLE, 3, now, &p), None);
    assert_eq!(d.observe(addr(1), &UNAVAILABLE, 3, now, &p), Some(now + Duration::from_secs(15)));
}

#[test]
fn local_origin_failures_are_counted_apart_when_split() {
    let (mut d, now, p) = (Detector::default(), Instant::now(), policy());
    d.observe(addr(1), &REFUSED, 3, now, &p);
    d.observe(addr(1), &UNAVAILABLE, 3, now, &p);
    d.observe(addr(1), &REFUSED, 3, now, &p);
    assert_eq!(d.observe(addr(1), &UNAVAILABLE, 3, now, &p), None, "a response resets local");
    assert_eq!(d.observe(addr(1), &REFUSED, 3, now, &p), None);
    assert_eq!(d.observe(addr(1), &REFUSED, 3, now, &p), None);
    assert!(d.observe(addr(1), &REFUSED, 3, now, &p).is_some(), "three local failures in a row");

    let unsplit = OutlierPolicy { split_external_local_origin_errors: false, ..policy() };
    let mut d = Detector::default();
    d.observe(addr(1), &REFUSED, 3, now, &unsplit);
    d.observe(addr(1), &UNAVAILABLE, 3, now, &unsplit);
    assert!(
        d.observe(addr(1), &REFUSED, 3, now, &unsplit).is_some(),
        "all count as gateway errors"
    );
}

#[test]
fn repeat_ejections_last_longer_up_to_the_cap_and_are_forgiven_at_intervals() {
    let p = OutlierPolicy { max_ejection_time: Duration::from_secs(40), ..policy() };
    let (mut d, mut now) = (Detector::default(), Instant::now());
    let eject = |d: &mut Detector, now: Instant| {
        (0..3).find_map(|_| d.observe(addr(1), &UNAVAILABLE, 3, now, &p)).expect("ejected")
    };
    let mut times = Vec::new();
    for _ in 0..4 {
        let until = eject(&mut d, now);
        times.push(until - now);
        now = until;
    }
    let secs: Vec<u64> = times.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, [15, 30, 40, 40]);
    assert_eq!(d.ejections(&addr(1)), 4);
    d.tick(now, &p);
    assert_eq!(d.ejections(&addr(1)), 4, "readmitted, not yet forgiven");
    d.tick(now + p.interval, &p);
    assert_eq!(d.ejections(&addr(1)), 3, "one forgiven per interval in rotation");
    d.tick(now + p.interval + Duration::from_secs(1), &p);
    assert_eq!(d.ejections(&addr(1)), 3, "not before the next interval");
    d.tick(now + p.interval * 2, &p);
    assert_eq!(d.ejections(&addr(1)), 2);
}

#[test]
fn max_ejection_percent_holds() {
    let (mut d, now, p) = (Detector::default(), Instant::now(), policy());
    let trip =
        |d: &mut Detector, n: u8| (0..3).find_map(|_| d.observe(addr(n), &UNAVAILABLE, 3, now, &p));
    assert!(trip(&mut d, 1).is_some(), "one of three (33%) may go");
    assert!(trip(&mut d, 2).is_none(), "two of three (67%) would pass 50%");
    let ten = OutlierPolicy { max_ejection_percent: 10, ..p.clone() };
    let mut d = Detector::default();
    assert!(
        (0..3).find_map(|_| d.observe(addr(1), &UNAVAILABLE, 3, now, &ten)).is_some(),
        "always one"
    );
    let off = OutlierPolicy { enabled: false, ..p };
    assert!(
        (0..9)
            .find_map(|_| Detector::default().observe(addr(1), &UNAVAILABLE, 3, now, &off))
            .is_none()
    );
}
