//! Upstream sockets the pool can shut down from outside. When an endpoint is gone its
//! sockets are shut down, so every request, stream and tunnel on them ends at once:
//! hyper runs an HTTP/2 connection in tasks of its own that finish their streams
//! gracefully, so stopping the tasks the pool spawned would not end them.

use std::{
    io,
    net::Shutdown,
    os::fd::AsFd as _,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, Weak},
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// A connection's socket, with a second handle on it that lives as long as the
/// connection does.
pub struct Socket {
    stream: TcpStream,
    _handle: Arc<std::net::TcpStream>,
}

/// Second handles on an endpoint's sockets, to shut them down.
#[derive(Default)]
pub struct Sockets(Mutex<Vec<Weak<std::net::TcpStream>>>);

impl Sockets {
    /// Keeps a handle on `stream`'s socket (a duplicate descriptor, closed with the
    /// connection).
    pub fn track(&self, stream: TcpStream) -> io::Result<Socket> {
        let handle = Arc::new(std::net::TcpStream::from(stream.as_fd().try_clone_to_owned()?));
        let mut handles = self.handles();
        handles.retain(|h| h.strong_count() > 0);
        handles.push(Arc::downgrade(&handle));
        Ok(Socket { stream, _handle: handle })
    }

    /// Shuts every socket down: reads see their end, writes fail.
    pub fn shut_down(&self) -> usize {
        let handles: Vec<_> = self.handles().drain(..).filter_map(|h| h.upgrade()).collect();
        for handle in &handles {
            let _ = handle.shutdown(Shutdown::Both);
        }
        handles.len()
    }

    fn handles(&self) -> MutexGuard<'_, Vec<Weak<std::net::TcpStream>>> {
        crate::sync::lock(&self.0)
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn shutting_down_ends_a_pending_read_and_lets_closed_sockets_go() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sockets = Sockets::default();
        let closed = sockets.track(TcpStream::connect(addr).await.unwrap()).unwrap();
        drop(closed);
        let mut open = sockets.track(TcpStream::connect(addr).await.unwrap()).unwrap();
        let (_peer, _) = listener.accept().await.unwrap();
        let read = tokio::spawn(async move { open.read(&mut [0; 16]).await });
        tokio::task::yield_now().await;
        assert_eq!(sockets.shut_down(), 1, "the dropped connection's handle went with it");
        assert_eq!(read.await.unwrap().unwrap(), 0, "the read sees the end at once");
        let mut writer = sockets.track(TcpStream::connect(addr).await.unwrap()).unwrap();
        sockets.shut_down();
        assert!(writer.write_all(b"late").await.is_err());
    }
}
