//! HTTP/2 from the client: the agent terminates the connection and balances each
//! request (stream) on its own; extended CONNECT (RFC 8441) is offered, and becomes a
//! tunnel to the endpoint that accepts it. On shutdown it sends GOAWAY and lets the
//! requests in flight finish.

use std::{convert::Infallible, sync::Arc, time::Duration};

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};
use tracing::debug;

use super::call;
use crate::upstream::Balancer;

/// Pings an idle client this often, and drops it if a ping goes unanswered this long.
const CLIENT_KEEPALIVE: Duration = Duration::from_secs(10);
const CLIENT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve<S>(io: S, balancer: Arc<Balancer>, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handler = hyper::service::service_fn(move |req| {
        let balancer = balancer.clone();
        async move { Ok::<_, Infallible>(call::handle(&balancer, req).await) }
    });
    let connection = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(CLIENT_KEEPALIVE)
        .keep_alive_timeout(CLIENT_KEEPALIVE_TIMEOUT)
        .enable_connect_protocol()
        .serve_connection(TokioIo::new(io), handler);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stopping(&mut shutdown) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        debug!("downstream h2 connection ended: {err}");
    }
}

/// Resolves once the agent begins to shut down; never, if no one can tell it to.
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}
