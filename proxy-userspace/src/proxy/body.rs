//! Bodies on the proxy's path: a request body kept for replay when it is small, and
//! a response body that reports how the response ended.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Empty, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A downstream request body: whole, so it can be sent again, or too big to keep.
pub enum RequestBody {
    Replayable {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Sent once: what was read so far, then the rest.
    Streaming(Option<ProxyBody>),
}

impl RequestBody {
    /// Reads `body` until its end, or until it passes `max` bytes.
    pub async fn read(mut body: Incoming, max: usize) -> Result<Self, hyper::Error> {
        let mut data = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            match frame.into_data() {
                Ok(chunk) => {
                    data.extend_from_slice(&chunk);
                    if data.len() > max {
                        let head = Full::new(data.freeze()).map_err(|never| match never {});
                        let rest = body.map_err(BoxError::from);
                        return Ok(Self::Streaming(Some(
                            Chain { head: Some(head), rest }.boxed_unsync(),
                        )));
                    }
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().ok();
                    return Ok(Self::Replayable { data: data.freeze(), trailers });
                }
            }
        }
        Ok(Self::Replayable { data: data.freeze(), trailers: None })
    }

    pub fn replayable(&self) -> bool {
        matches!(self, Self::Replayable { .. })
    }

    /// The body for one try; a streaming body can be taken once.
    pub fn take(&mut self) -> Option<ProxyBody> {
        match self {
            Self::Replayable { data, trailers } => {
                let data = Full::new(data.clone()).map_err(|never| match never {});
                Some(match trailers.clone() {
                    Some(t) => data.with_trailers(async move { Some(Ok(t)) }).boxed_unsync(),
                    None => data.boxed_unsync(),
                })
            }
            Self::Streaming(body) => body.take(),
        }
    }
}

/// `head`'s frames, then `rest`'s.
struct Chain<A, B> {
    head: Option<A>,
    rest: B,
}

impl<A, B> Body for Chain<A, B>
where
    A: Body<Data = Bytes, Error = BoxError> + Unpin,
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(head) = self.head.as_mut() {
            match Pin::new(head).poll_frame(cx) {
                Poll::Ready(None) => self.head = None,
                other => return other,
            }
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}

/// How a response body ended, for whoever watches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Its end arrived; `grpc_status` from the trailers, when there were any.
    Complete { grpc_status: Option<u32> },
    /// The upstream failed mid-body.
    Failed,
    /// The client went away first.
    Abandoned,
}

/// A response body that calls `done` once with how it ended.
pub struct Watched<F: FnOnce(Ending)> {
    inner: Incoming,
    done: Option<F>,
}

impl<F: FnOnce(Ending)> Watched<F> {
    pub fn new(inner: Incoming, done: F) -> Self {
        Self { inner, done: Some(done) }
    }

    fn finish(&mut self, ending: Ending) {
        if let Some(done) = self.done.take() {
            done(ending);
        }
    }
}

impl<F: FnOnce(Ending) + Unpin> Body for Watched<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let grpc_status = super::grpc::status(trailers);
                    self.finish(Ending::Complete { grpc_status });
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Ending::Failed),
            Poll::Ready(None) => self.finish(Ending::Complete { grpc_status: None }),
            Poll::Pending => {}
        }
        polled.map(|f| f.map(|r| r.map_err(BoxError::from)))
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(Ending)> Drop for Watched<F> {
    fn drop(&mut self) {
        self.finish(Ending::Abandoned);
    }
}
