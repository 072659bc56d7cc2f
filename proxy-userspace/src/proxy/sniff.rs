//! Protocol detection on a steered connection: the HTTP/2 prior-knowledge preface
//! means h2 (gRPC and plain h2), an HTTP/1.x request line means HTTP/1.1, anything
//! else (TLS included) is opaque TCP. The bytes read to decide are replayed to
//! whatever serves the connection ([`Prefixed`]). A client that says nothing within
//! the sniff time is served as opaque TCP.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest HTTP/1 method we recognise (`OPTIONS`), plus its space.
const METHOD_MAX: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    H2,
    Http1,
    Opaque,
}

/// What the first bytes say, or `None` when more bytes are needed to decide.
pub fn classify(bytes: &[u8]) -> Option<Protocol> {
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::H2);
    }
    let token = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
    match bytes.get(token) {
        Some(b' ') if token > 0 && token < METHOD_MAX => Some(Protocol::Http1),
        None if token < METHOD_MAX => None,
        _ => Some(Protocol::Opaque),
    }
}

/// Reads until the protocol is known or `patience` runs out; returns it with the
/// bytes read, which the caller must replay.
pub async fn sniff<S: AsyncRead + Unpin>(stream: &mut S, patience: Duration) -> (Protocol, Bytes) {
    let mut seen = BytesMut::with_capacity(H2_PREFACE.len());
    let decided = tokio::time::timeout(patience, async {
        loop {
            if let Some(protocol) = (!seen.is_empty()).then(|| classify(&seen)).flatten() {
                return protocol;
            }
            let mut chunk = [0u8; 24];
            let want = H2_PREFACE.len().saturating_sub(seen.len()).max(1);
            match stream.read(&mut chunk[..want]).await {
                Ok(0) | Err(_) => return Protocol::Opaque,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    (decided.unwrap_or(Protocol::Opaque), seen.freeze())
}

/// A stream that first yields `prefix`, then the stream's own bytes.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    /// HTTP/2 writes a frame's header and payload in one system call through this.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    /// Without this, HTTP/2 frames to the client took a system call per slice.
    #[tokio::test]
    async fn writes_go_through_vectored_in_one_call() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let mut prefixed = Prefixed::new(Bytes::new(), accepted.unwrap().0);
        assert!(prefixed.is_write_vectored());
        let bufs = [io::IoSlice::new(b"frame "), io::IoSlice::new(b"payload")];
        assert_eq!(prefixed.write_vectored(&bufs).await.unwrap(), 13);
        let mut got = [0u8; 13];
        tokio::io::AsyncReadExt::read_exact(&mut client.unwrap(), &mut got).await.unwrap();
        assert_eq!(&got, b"frame payload");
    }

    /// Found by `cargo xtask fuzz sniff`: a 9-letter word and a space was HTTP/1 when
    /// it all came at once, but opaque when its first 8 bytes came alone.
    #[test]
    fn a_decision_on_a_prefix_holds_when_more_bytes_come() {
        let input = b"PRSSSIGMH P* ";
        let whole = classify(input);
        assert_eq!(whole, Some(Protocol::Opaque), "longer than any method");
        for cut in 0..input.len() {
            if let Some(early) = classify(&input[..cut]) {
                assert_eq!(Some(early), whole, "after {cut} bytes");
            }
        }
    }

    #[test]
    fn classifies_prefixes_of_each_protocol() {
        assert_eq!(classify(H2_PREFACE), Some(Protocol::H2));
        assert_eq!(classify(&H2_PREFACE[..10]), None, "a partial preface needs more");
        assert_eq!(classify(b"P"), None);
        assert_eq!(classify(b"POST /x HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GET "), Some(Protocol::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"PRI * HTTP/1.1"), Some(Protocol::Http1), "PRI as an HTTP/1 method");
        assert_eq!(classify(&[0x16, 0x03, 0x01]), Some(Protocol::Opaque), "TLS ClientHello");
        assert_eq!(classify(b"get /"), Some(Protocol::Opaque));
        assert_eq!(classify(b"ABCDEFGHIJ"), Some(Protocol::Opaque), "no method is that long");
        assert_eq!(classify(b"\r\n"), Some(Protocol::Opaque));
    }

    #[tokio::test]
    async fn sniffed_bytes_are_replayed_and_silence_is_opaque() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&H2_PREFACE[..5]).await.unwrap();
        let writer = tokio::spawn(async move {
            client.write_all(&H2_PREFACE[5..]).await.unwrap();
            client.write_all(b"frames").await.unwrap();
            client
        });
        let (protocol, seen) = sniff(&mut server, Duration::from_secs(5)).await;
        assert_eq!(protocol, Protocol::H2);
        let _client = writer.await.unwrap();
        let mut replayed = Prefixed::new(seen, server);
        let mut all = vec![0u8; H2_PREFACE.len() + 6];
        replayed.read_exact(&mut all).await.unwrap();
        assert_eq!(&all[..H2_PREFACE.len()], H2_PREFACE);
        assert_eq!(&all[H2_PREFACE.len()..], b"frames");

        let (_quiet, mut server) = tokio::io::duplex(64);
        let (protocol, seen) = sniff(&mut server, Duration::from_millis(20)).await;
        assert_eq!((protocol, seen.len()), (Protocol::Opaque, 0));
    }
}
