//! A client of `sockeye.test.Echo` over one HTTP/2 connection (a tonic `Channel`).

use std::{net::SocketAddr, time::Duration};

use http::uri::PathAndQuery;
use tonic::{Request, Status, client::Grpc, transport::Channel};
use tonic_prost::ProstCodec;

use super::{CALL_PATH, CallReply, CallRequest};

#[derive(Clone)]
pub struct EchoClient {
    grpc: Grpc<Channel>,
}

impl EchoClient {
    /// A client whose connection is made on first use and remade after failures.
    pub fn lazy(addr: SocketAddr) -> anyhow::Result<Self> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self { grpc: Grpc::new(channel) })
    }

    /// One unary call with a deadline (sent as `grpc-timeout`).
    pub async fn call(
        &mut self,
        request: CallRequest,
        timeout: Duration,
    ) -> Result<CallReply, Status> {
        let mut request = Request::new(request);
        request.set_timeout(timeout);
        self.grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let path = PathAndQuery::from_static(CALL_PATH);
        let reply =
            tokio::time::timeout(timeout, self.grpc.unary(request, path, ProstCodec::default()))
                .await
                .map_err(|_| Status::deadline_exceeded("client-side timeout"))??;
        Ok(reply.into_inner())
    }
}
