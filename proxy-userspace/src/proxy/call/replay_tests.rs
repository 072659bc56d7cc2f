use std::{convert::Infallible, time::Duration};

use futures::channel::mpsc;
use http_body_util::{BodyExt as _, StreamBody};

use super::*;

type Sender = mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;
type Client = StreamBody<mpsc::UnboundedReceiver<Result<Frame<Bytes>, Infallible>>>;

/// A client body the test feeds chunk by chunk.
fn client() -> (Sender, Client) {
    let (tx, rx) = mpsc::unbounded();
    (tx, StreamBody::new(rx))
}

fn send(tx: &Sender, chunk: &'static str) {
    tx.unbounded_send(Ok(Frame::data(Bytes::from_static(chunk.as_bytes())))).unwrap();
}

/// The next data chunk of a try, as text.
async fn next(body: &mut TryBody<Client>) -> String {
    let frame = body.frame().await.expect("a frame").expect("no error");
    String::from_utf8(frame.into_data().expect("data").to_vec()).unwrap()
}

#[tokio::test]
async fn a_try_streams_chunks_as_they_arrive() {
    let (tx, inner) = client();
    let body = ReplayBody::new(inner, 1024);
    let mut first = body.next_try();
    send(&tx, "hello");
    assert_eq!(next(&mut first).await, "hello", "sent before the client's body ends");
    // Nothing more yet: the try waits for the client rather than for the body's end.
    let pending = futures::poll!(std::pin::pin!(first.frame()));
    assert!(pending.is_pending());
    send(&tx, " world");
    assert_eq!(next(&mut first).await, " world");
}

#[tokio::test]
async fn a_retry_replays_what_was_sent_then_reads_on() {
    let (tx, inner) = client();
    let body = ReplayBody::new(inner, 1024);
    let mut first = body.next_try();
    send(&tx, "a");
    send(&tx, "b");
    assert_eq!(next(&mut first).await, "a");
    assert_eq!(next(&mut first).await, "b");
    assert!(body.replayable());

    let mut second = body.next_try();
    assert!(first.frame().await.unwrap().is_err(), "the first try is superseded");
    assert_eq!(next(&mut second).await, "a");
    assert_eq!(next(&mut second).await, "b");
    send(&tx, "c");
    assert_eq!(next(&mut second).await, "c");
    drop(tx);
    assert!(second.frame().await.is_none());
    assert!(second.is_end_stream());
}

#[tokio::test]
async fn a_body_that_outgrows_the_copy_is_sent_once() {
    let (tx, inner) = client();
    let body = ReplayBody::new(inner, 4);
    let mut first = body.next_try();
    send(&tx, "abc");
    assert_eq!(next(&mut first).await, "abc");
    assert!(body.replayable(), "3 bytes fit in 4");
    send(&tx, "de");
    assert_eq!(next(&mut first).await, "de", "the try still gets every byte");
    assert!(!body.replayable(), "5 bytes do not");
    send(&tx, "f");
    assert_eq!(next(&mut first).await, "f");

    let mut second = body.next_try();
    assert!(matches!(second.frame().await, Some(Err(ReplayError::Outgrown))));
}

#[tokio::test]
async fn trailers_are_replayed_and_commit_frees_the_copy() {
    let (tx, inner) = client();
    let body = ReplayBody::new(inner, 1024);
    let first = body.next_try();
    send(&tx, "x");
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    tx.unbounded_send(Ok(Frame::trailers(trailers.clone()))).unwrap();
    let collected = first.collect().await.unwrap();
    assert_eq!(collected.trailers(), Some(&trailers));

    let second = body.next_try();
    let collected = second.collect().await.unwrap();
    assert_eq!(collected.trailers(), Some(&trailers));
    assert_eq!(collected.to_bytes(), "x");

    body.commit();
    assert!(!body.replayable());
    assert!(body.shared.lock().copy.is_empty());
}

#[tokio::test]
async fn an_empty_body_is_ended_from_the_start() {
    let body = ReplayBody::new(http_body_util::Empty::<Bytes>::new(), 1024);
    let first = body.next_try();
    assert!(first.is_end_stream(), "a GET goes out with END_STREAM on its headers");
    assert_eq!(first.size_hint().exact(), Some(0));
}

#[tokio::test(start_paused = true)]
async fn progress_tells_when_the_client_last_sent_something() {
    let (tx, inner) = client();
    let start = Instant::now();
    let body = ReplayBody::new(inner, 1024);
    let mut first = body.next_try();
    assert_eq!(body.progress(), start);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(body.progress(), start, "nothing read yet");
    send(&tx, "late");
    assert_eq!(next(&mut first).await, "late");
    assert_eq!(body.progress() - start, Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(tx);
    assert!(first.frame().await.is_none());
    assert_eq!(body.progress() - start, Duration::from_secs(4), "the end counts too");
}

#[tokio::test]
async fn a_failing_client_fails_the_try() {
    let (tx, rx) = mpsc::unbounded::<Result<Frame<Bytes>, std::io::Error>>();
    let body = ReplayBody::new(StreamBody::new(rx), 1024);
    let mut first = body.next_try();
    tx.unbounded_send(Err(std::io::ErrorKind::ConnectionReset.into())).unwrap();
    assert!(matches!(first.frame().await, Some(Err(ReplayError::Client(_)))));
    assert!(!body.replayable(), "a broken body is never sent again");
    let mut second = body.next_try();
    assert!(matches!(second.frame().await, Some(Err(ReplayError::ClientFailed))));
}

#[tokio::test]
async fn a_hedge_of_a_whole_body_runs_beside_the_try_it_hedges() {
    let (tx, inner) = client();
    let body = ReplayBody::new(inner, 1024);
    let mut first = body.next_try();
    send(&tx, "a");
    assert_eq!(next(&mut first).await, "a");
    assert!(!body.may_hedge(), "the client may still be streaming to the first try");
    drop(tx);
    assert!(first.frame().await.is_none());
    assert!(body.may_hedge(), "the whole body is in the copy");

    let hedge = body.next_try();
    let replayed = body.next_try().collect().await.unwrap().to_bytes();
    assert_eq!(replayed, "a");
    assert_eq!(hedge.collect().await.unwrap().to_bytes(), "a", "a superseded try replays too");
    assert!(first.is_end_stream(), "the first try is not failed by the hedges");
    assert!(!body.spoiled(first.generation()));
}

#[tokio::test]
async fn a_hedge_reads_a_body_no_try_began_and_the_first_try_replays_it() {
    let (tx, inner) = client();
    let body = ReplayBody::new(inner, 1024);
    // The first try is still connecting: it has not polled the body.
    let first = body.next_try();
    send(&tx, "msg");
    drop(tx);
    assert!(body.may_hedge());
    let hedge = body.next_try();
    assert_eq!(hedge.collect().await.unwrap().to_bytes(), "msg");
    assert_eq!(first.collect().await.unwrap().to_bytes(), "msg");
}

#[tokio::test]
async fn a_superseded_try_that_would_read_from_the_client_is_spoiled_not_its_endpoint() {
    let (tx, inner) = client();
    let body = ReplayBody::new(inner, 1024);
    let mut first = body.next_try();
    let mut second = body.next_try();
    send(&tx, "x");
    assert_eq!(next(&mut second).await, "x");
    assert_eq!(next(&mut first).await, "x", "the copy is replayed");
    assert!(matches!(first.frame().await, Some(Err(ReplayError::Superseded))));
    assert!(body.spoiled(first.generation()));
    assert!(!body.spoiled(second.generation()));
}
