//! The admin endpoint: `/healthz` (the process serves) and `/readyz` (programs are
//! attached and maps are filled). Read-only; it binds where the config says.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, server::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

/// Whether the agent is ready to have traffic steered to it.
#[derive(Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

pub async fn serve(listener: TcpListener, readiness: Arc<Readiness>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let readiness = readiness.clone();
                async move { Ok::<_, Infallible>(respond(&req, &readiness)) }
            });
            if let Err(err) =
                http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                debug!("admin connection: {err}");
            }
        });
    }
}

fn respond<B>(req: &Request<B>, readiness: &Readiness) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "the admin endpoint is read-only\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if readiness.get() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(StatusCode::NOT_FOUND, "try /healthz or /readyz\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, readiness: &Readiness) -> StatusCode {
        respond(&Request::get(path).body(()).unwrap(), readiness).status()
    }

    #[test]
    fn readyz_follows_readiness_and_healthz_always_answers() {
        let readiness = Readiness::default();
        assert_eq!(get("/healthz", &readiness), StatusCode::OK);
        assert_eq!(get("/readyz", &readiness), StatusCode::SERVICE_UNAVAILABLE);
        readiness.set(true);
        assert_eq!(get("/readyz", &readiness), StatusCode::OK);
        assert_eq!(get("/nope", &readiness), StatusCode::NOT_FOUND);
        let post = Request::post("/readyz").body(()).unwrap();
        assert_eq!(respond(&post, &readiness).status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
