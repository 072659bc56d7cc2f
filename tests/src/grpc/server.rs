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

use super::{CALL_PATH, CHAT_PATH, FETCH_PATH, UPLOAD_PATH, backend::Backend};

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
        let backend = self.backend.clone();
        match req.uri().path() {
            CALL_PATH => {
                let call = Handler(move |r| {
                    let backend = backend.clone();
                    async move { backend.answer(r).await.map(tonic::Response::new) }
                });
                return Box::pin(async move { Ok(grpc().unary(call, req).await) });
            }
            FETCH_PATH => {
                let fetch = Handler(move |r| std::future::ready(backend.clone().fetch(r)));
                return Box::pin(async move { Ok(grpc().server_streaming(fetch, req).await) });
            }
            UPLOAD_PATH => {
                let upload = Handler(move |r| {
                    let backend = backend.clone();
                    async move { backend.upload(r).await }
                });
                return Box::pin(async move { Ok(grpc().client_streaming(upload, req).await) });
            }
            CHAT_PATH => {
                let chat = Handler(move |r| std::future::ready(backend.clone().chat(r)));
                return Box::pin(async move { Ok(grpc().streaming(chat, req).await) });
            }
            _ => {}
        }
        let path = req.uri().path();
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

/// A gRPC server for one method's message types.
fn grpc<E, D>() -> Grpc<ProstCodec<E, D>>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    Grpc::new(ProstCodec::default())
}

/// A gRPC method from a function of the request.
#[derive(Clone)]
struct Handler<F>(F);

impl<F, Fut, Req, Res> Service<tonic::Request<Req>> for Handler<F>
where
    F: FnMut(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Res>, Status>>,
{
    type Response = tonic::Response<Res>;
    type Error = Status;
    type Future = Fut;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<Req>) -> Fut {
        (self.0)(req)
    }
}
