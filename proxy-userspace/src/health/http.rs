//! The HTTP check: a GET of the policy's path on a fresh connection; any 2xx passes.

use std::net::SocketAddr;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::policy::HealthPolicy;

pub async fn check(addr: SocketAddr, policy: HealthPolicy) -> bool {
    let Ok(stream) = TcpStream::connect(addr).await else { return false };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return false;
    };
    let connection = tokio::spawn(connection);
    let request = http::Request::get(policy.http_path.as_str())
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "sockeye-health-check")
        .body(Empty::<Bytes>::new());
    let passed = match request {
        Ok(request) => sender.send_request(request).await.is_ok_and(|r| r.status().is_success()),
        Err(_) => false,
    };
    connection.abort();
    passed
}
