//! HTTP/1.1 from the client: each request on the connection is balanced on its own,
//! like an HTTP/2 stream. When the agent drains, the response in flight is the
//! connection's last (`Connection: close`).

use std::{convert::Infallible, sync::Arc, time::Duration};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::forward::forward;
use crate::{drain::DrainWatch, upstream::Balancer};

/// A client must finish sending request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve<S>(io: S, balancer: Arc<Balancer>, drain: DrainWatch)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let balancer = balancer.clone();
        async move { Ok::<_, Infallible>(forward(&balancer, req).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    // Inline rather than through a generic helper: hyper's connection futures defeat
    // the compiler's Send inference when passed by reference into another future.
    let mut drain = drain;
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = drain.draining() => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                () = drain.closing() => return,
            }
        }
    };
    if let Err(err) = result {
        debug!("downstream HTTP/1.1 connection ended: {err}");
    }
}
