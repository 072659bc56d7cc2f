//! The checkers against real servers on loopback: a tonic `grpc.health.v1` server,
//! an HTTP server, and ports that refuse.

use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use super::*;

fn policy() -> HealthPolicy {
    HealthPolicy { interval: Duration::from_millis(100), ..HealthPolicy::default() }
}

async fn next(results: &mut mpsc::UnboundedReceiver<(SocketAddr, Check)>) -> Check {
    tokio::time::timeout(Duration::from_secs(5), results.recv())
        .await
        .expect("a finding in time")
        .unwrap()
        .1
}

/// A refused port: bind, note the address, close.
async fn refused_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

#[tokio::test]
async fn grpc_watch_sees_not_serving_at_once() {
    let (reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(health, incoming));
    reporter.set_service_status("", ServingStatus::Serving).await;

    let (tx, mut results) = mpsc::unbounded_channel();
    let checker = Active.start(addr, Protocol::Grpc, policy(), tx);
    // SERVING, then silence from Watch: the status still counts once per interval, so
    // a backend coming back passes healthy_threshold checks; then no more (a pass
    // past the threshold changes nothing).
    for _ in 0..=policy().healthy_threshold {
        assert_eq!(next(&mut results).await, Check::Pass);
    }
    let quiet = tokio::time::timeout(policy().interval * 4, results.recv()).await;
    assert!(quiet.is_err(), "SERVING repeated past the threshold: {quiet:?}");
    let flipped = Instant::now();
    reporter.set_service_status("", ServingStatus::NotServing).await;
    let first_fail = loop {
        match next(&mut results).await {
            Check::Pass => continue,
            other => break other,
        }
    };
    assert_eq!(first_fail, Check::FailNow);
    let delay = flipped.elapsed();
    assert!(delay < Duration::from_millis(500), "Watch reported NOT_SERVING after {delay:?}");
    reporter.set_service_status("", ServingStatus::Serving).await;
    assert_eq!(next(&mut results).await, Check::Pass);
    checker.abort();

    let (tx, mut results) = mpsc::unbounded_channel();
    let checker = Active.start(refused_addr().await, Protocol::Grpc, policy(), tx);
    assert_eq!(next(&mut results).await, Check::Fail);
    checker.abort();
}

/// A tonic health server reporting SERVING, behind a relay whose `freeze` stops
/// every byte both ways, as a SIGSTOPped backend's kernel would hold them unread.
async fn freezable_health_server() -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", ServingStatus::Serving).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        let _reporter = reporter;
        tonic::transport::Server::builder().serve_with_incoming(health, incoming).await
    });
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = relay.local_addr().unwrap();
    let (freeze, frozen) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((client, _)) = relay.accept().await {
            let mut frozen = frozen.clone();
            tokio::spawn(async move {
                let upstream = tokio::net::TcpStream::connect(server).await.unwrap();
                let (mut client, mut upstream) = (client, upstream);
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => return,
                    _ = async { frozen.wait_for(|f| *f).await.map(drop) } => {}
                }
                // Frozen: both sockets stay open, and nothing moves.
                std::future::pending::<()>().await;
                drop((client, upstream));
            });
        }
    });
    (addr, freeze)
}

#[tokio::test]
async fn grpc_watch_on_a_frozen_backend_fails_within_two_timeouts() {
    let (addr, freeze) = freezable_health_server().await;
    // Long enough that a busy machine answers every ping within one.
    let policy = HealthPolicy { timeout: Duration::from_millis(400), ..policy() };
    let (tx, mut results) = mpsc::unbounded_channel();
    let checker = Active.start(addr, Protocol::Grpc, policy.clone(), tx);
    for _ in 0..=policy.healthy_threshold {
        assert_eq!(next(&mut results).await, Check::Pass);
    }
    // Silent and answering pings: no finding for several timeouts.
    let quiet = tokio::time::timeout(policy.timeout * 3, results.recv()).await;
    assert!(quiet.is_err(), "a live, silent Watch was reported: {quiet:?}");

    let frozen = Instant::now();
    freeze.send_replace(true);
    assert_eq!(next(&mut results).await, Check::Fail);
    let took = frozen.elapsed();
    // A ping goes out within one timeout and is found unanswered one later.
    assert!(took < policy.timeout * 4, "the frozen backend was found after {took:?}");
    // Checks of a backend frozen before they connect fail too: the Watch's headers
    // never come.
    for _ in 0..2 {
        assert_eq!(next(&mut results).await, Check::Fail);
    }
    checker.abort();
}

#[tokio::test(start_paused = true)]
async fn pings_of_all_checks_fall_on_the_same_instants() {
    let period = Duration::from_millis(1000);
    let mut first = grpc::beat(period);
    let a = first.tick().await;
    tokio::time::sleep(Duration::from_millis(370)).await;
    let mut second = grpc::beat(period);
    let b = second.tick().await;
    assert_eq!(b, a + period, "the later check's first ping waits for the shared beat");
    assert_eq!(first.tick().await, b);
    assert_eq!(second.tick().await, b + period);
}

#[tokio::test]
async fn tcp_and_http_checks_pass_and_fail() {
    let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (tx, mut results) = mpsc::unbounded_channel();
    let checker = Active.start(open.local_addr().unwrap(), Protocol::Tcp, policy(), tx.clone());
    assert_eq!(next(&mut results).await, Check::Pass);
    checker.abort();
    let checker = Active.start(refused_addr().await, Protocol::Tcp, policy(), tx);
    assert_eq!(next(&mut results).await, Check::Fail);
    checker.abort();

    for (status, expected) in [(200, Check::Pass), (503, Check::Fail)] {
        let addr = http_server(status).await;
        let (tx, mut results) = mpsc::unbounded_channel();
        let checker = Active.start(addr, Protocol::Http, policy(), tx);
        assert_eq!(next(&mut results).await, expected, "HTTP {status}");
        checker.abort();
    }
}

/// An HTTP/1.1 server answering every request with `status`.
async fn http_server(status: u16) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(move |_req| async move {
                let mut response =
                    ::http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                *response.status_mut() = ::http::StatusCode::from_u16(status).unwrap();
                Ok::<_, std::convert::Infallible>(response)
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
        }
    });
    addr
}
