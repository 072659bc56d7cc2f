//! The request body of a call, streamed to each try as it arrives, with a bounded copy
//! kept so that a failed try can be replayed on another endpoint.
//!
//! Every try gets a [`TryBody`]: it first replays the bytes earlier tries read (from the
//! copy), then reads on from the client. Whatever a try reads from the client is added
//! to the copy, as long as the copy stays within `max_replay_bytes`; once a chunk would
//! outgrow it, the copy is dropped and the call can no longer be retried (it is
//! committed to the endpoint that has the bytes). A newer try supersedes the older
//! ones for what the client has still to send: a superseded body that wants to read on
//! from the client fails instead, so its stream is reset and it never reads what
//! belongs to the new try. Replaying the copy needs no turn: a hedge sent once the
//! client's body has ended (or before any try began to read it) runs beside the try
//! it hedges, each sending the whole request.
//!
//! linkerd2-proxy's `ReplayBody` is the model; this one is simpler because only the
//! newest try reads from the client and a superseded try is failed rather than
//! waited for.

use std::{
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::proxy::body::BoxError;

/// The client's request body, shared by the call and its tries.
pub struct ReplayBody<B> {
    shared: Arc<Shared<B>>,
}

struct Shared<B> {
    state: Mutex<State<B>>,
}

struct State<B> {
    /// The client's body, until it ends.
    inner: Option<B>,
    /// Chunks read from the client so far.
    read: usize,
    /// Every chunk read from the client so far, while they fit.
    copy: Vec<Bytes>,
    copied: usize,
    max: usize,
    /// The copy was outgrown or given up: the bytes read so far cannot be replayed.
    outgrown: bool,
    /// Reading the client's body failed: no try may send it as if it were whole.
    client_failed: bool,
    trailers: Option<HeaderMap>,
    /// When the client last sent something: the call's start, then each frame read
    /// and the body's end. The deadlines count from it.
    progress: Instant,
    /// The try whose body may read from the client; earlier ones are superseded.
    generation: u64,
    /// Some try has polled the client's body.
    polled: bool,
    /// Tries whose body failed on its own (superseded, or the copy outgrown): their
    /// endpoint is not to blame.
    spoiled: Vec<u64>,
}

/// Why a try's body stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the request body moved on to a newer try")]
    Superseded,
    #[error("the request body was outgrown before this try could replay it")]
    Outgrown,
    #[error("reading the client's request body failed")]
    Client(#[source] BoxError),
    #[error("the client's request body failed during an earlier try")]
    ClientFailed,
}

impl<B> ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Keeps at most `max` bytes for replay. A body that is already at its end (a GET)
    /// is ended from the start.
    pub fn new(inner: B, max: usize) -> Self {
        let ended = inner.is_end_stream();
        let state = State {
            inner: (!ended).then_some(inner),
            read: 0,
            copy: Vec::new(),
            copied: 0,
            max,
            outgrown: false,
            client_failed: false,
            trailers: None,
            progress: Instant::now(),
            generation: 0,
            polled: false,
            spoiled: Vec::new(),
        };
        Self { shared: Arc::new(Shared { state: Mutex::new(state) }) }
    }

    /// The body for the next try; it supersedes every earlier one.
    pub fn next_try(&self) -> TryBody<B> {
        let mut state = self.shared.lock();
        state.generation += 1;
        TryBody { shared: self.shared.clone(), generation: state.generation, at: 0, done: false }
    }

    /// Whether a new try could send everything the client has sent so far.
    pub fn replayable(&self) -> bool {
        !self.shared.lock().outgrown
    }

    /// Whether a try may start beside the ones running (a hedge): the copy holds the
    /// client's whole body (or its end has arrived, unread), or no try has begun to
    /// read it (the new one will, and the others replay it). Never while the client
    /// is still streaming to a try.
    pub fn may_hedge(&self) -> bool {
        let state = self.shared.lock();
        let whole = state.inner.as_ref().is_none_or(|inner| !state.polled || inner.is_end_stream());
        !state.outgrown && !state.client_failed && whole
    }

    /// Whether the body of try `generation` failed on its own: the try's failure is
    /// the agent's doing, not its endpoint's.
    pub fn spoiled(&self, generation: u64) -> bool {
        self.shared.lock().spoiled.contains(&generation)
    }

    /// Whether reading the client's body failed (the client's fault, not an endpoint's).
    pub fn client_failed(&self) -> bool {
        self.shared.lock().client_failed
    }

    /// No more tries: the copy is freed and later chunks pass through uncopied.
    pub fn commit(&self) {
        let mut state = self.shared.lock();
        state.outgrown = true;
        state.copy = Vec::new();
        state.copied = 0;
    }

    /// When the client last sent something (or the call began).
    pub fn progress(&self) -> Instant {
        self.shared.lock().progress
    }
}

impl<B> Shared<B> {
    fn lock(&self) -> MutexGuard<'_, State<B>> {
        crate::sync::lock(&self.state)
    }
}

/// One try's view of the request body.
pub struct TryBody<B> {
    shared: Arc<Shared<B>>,
    generation: u64,
    /// Chunks of the client's body this try has sent.
    at: usize,
    done: bool,
}

impl<B> TryBody<B> {
    /// Which try this body belongs to (see [`ReplayBody::spoiled`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl<B> Body for TryBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = ReplayError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReplayError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let mut state = this.shared.lock();
        if state.client_failed {
            return Poll::Ready(Some(Err(ReplayError::ClientFailed)));
        }
        if this.at < state.read {
            // An earlier try read this chunk: send it again, if it was kept.
            let Some(chunk) = state.copy.get(this.at).filter(|_| !state.outgrown) else {
                state.spoiled.push(this.generation);
                return Poll::Ready(Some(Err(ReplayError::Outgrown)));
            };
            this.at += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if state.inner.is_none() {
            this.done = true;
            return Poll::Ready(state.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        // The end of the client's body may be read by any try: nothing follows it.
        let at_end = state.inner.as_ref().is_some_and(Body::is_end_stream);
        if state.generation != this.generation && !at_end {
            state.spoiled.push(this.generation);
            return Poll::Ready(Some(Err(ReplayError::Superseded)));
        }
        state.polled = true;
        let Some(inner) = state.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Err(err))) => {
                // Never replayed: a retry would send a truncated body as a whole one.
                state.client_failed = true;
                state.outgrown = true;
                return Poll::Ready(Some(Err(ReplayError::Client(err.into()))));
            }
            Poll::Ready(None) => {
                this.done = true;
                state.end();
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let frame = match frame.into_data() {
            Ok(chunk) => {
                state.keep(&chunk);
                this.at = state.read;
                if state.inner.as_ref().is_some_and(Body::is_end_stream) {
                    state.end();
                }
                Frame::data(chunk)
            }
            Err(frame) => {
                if let Some(trailers) = frame.trailers_ref() {
                    state.trailers = Some(trailers.clone());
                }
                this.done = true;
                state.end();
                frame
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        if self.done {
            return true;
        }
        let state = self.shared.lock();
        self.at >= state.read
            && state.trailers.is_none()
            && state.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let state = self.shared.lock();
        let replay: usize = state.copy.get(self.at..).map_or(0, |c| c.iter().map(Bytes::len).sum());
        let rest = state.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + replay as u64);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + replay as u64);
        }
        hint
    }
}

impl<B> State<B> {
    /// Adds a chunk to the copy, or gives the copy up when it would outgrow `max`.
    fn keep(&mut self, chunk: &Bytes) {
        self.read += 1;
        self.progress = Instant::now();
        if self.outgrown {
            return;
        }
        if self.copied + chunk.len() > self.max {
            self.outgrown = true;
            self.copy = Vec::new();
            self.copied = 0;
            return;
        }
        self.copied += chunk.len();
        self.copy.push(chunk.clone());
    }

    fn end(&mut self) {
        self.inner = None;
        self.progress = Instant::now();
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
