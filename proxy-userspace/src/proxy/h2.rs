//! HTTP/2 from the client: the agent terminates the connection and balances each
//! request (stream) on its own. When the agent drains it sends GOAWAY and lets the
//! requests in flight finish.

use std::{convert::Infallible, sync::Arc, time::Duration};

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::forward::forward;
use crate::{drain::DrainWatch, upstream::Balancer};

/// Pings an idle client this often, and drops it if a ping goes unanswered this long.
const CLIENT_KEEPALIVE: Duration = Duration::from_secs(10);
const CLIENT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve<S>(io: S, balancer: Arc<Balancer>, drain: DrainWatch)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let balancer = balancer.clone();
        async move { Ok::<_, Infallible>(forward(&balancer, req).await) }
    });
    let connection = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(CLIENT_KEEPALIVE)
        .keep_alive_timeout(CLIENT_KEEPALIVE_TIMEOUT)
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
        debug!("downstream h2 connection ended: {err}");
    }
}
