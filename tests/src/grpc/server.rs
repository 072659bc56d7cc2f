//! Serving `sockeye.test.Echo` and `grpc.health.v1.Health` on one port without a router:
//! a small tower service that dispatches on the request path.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{Status, body::Body, codegen::Service, server::Grpc};
use tonic_prost::ProstCodec;

use super::{CALL_PATH, CallReply, CallRequest, backend::Backend};

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

#[derive(Clone)]
pub struct Dispatch<H> {
    pub backend: Arc<Backend>,
    pub health: H,
    /// Answer Watch with UNIMPLEMENTED (a backend that only supports Check).
    pub no_watch: bool,
}

impl<H, B> Service<http::Request<B>> for Dispatch<H>
where
    H: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    H::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if path == CALL_PATH {
            let call = CallService(self.backend.clone());
            return Box::pin(
                async move { Ok(Grpc::new(ProstCodec::default()).unary(call, req).await) },
            );
        }
        if path == "/grpc.health.v1.Health/Watch" && self.no_watch {
            return Box::pin(async {
                Ok(Status::unimplemented("Watch is not supported").into_http())
            });
        }
        if path.starts_with("/grpc.health.v1.Health/") {
            let mut health = self.health.clone();
            return Box::pin(async move { health.call(req).await });
        }
        Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) })
    }
}

#[derive(Clone)]
struct CallService(Arc<Backend>);

impl Service<tonic::Request<CallRequest>> for CallService {
    type Response = tonic::Response<CallReply>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Status>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<CallRequest>) -> Self::Future {
        let backend = self.0.clone();
        Box::pin(async move { backend.answer(req).await.map(tonic::Response::new) })
    }
}
