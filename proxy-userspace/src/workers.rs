//! The data plane's threads: one single-threaded tokio runtime per core, each serving
//! the connections it is given from start to end, with upstream connections of its
//! own (see [`current`]). A call's tasks (the client's connection, its streams, the
//! endpoint's connection) then run on one thread and wake each other without crossing
//! threads. The control plane (discovery, health checks, admin, accept) stays on the
//! main runtime.

use std::{
    cell::Cell,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::{net::TcpStream, runtime::Handle, sync::watch};
use tracing::warn;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker whose thread this is, or `None` off the data plane (the main runtime,
/// tests).
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

pub struct Workers {
    workers: Vec<Worker>,
    next: AtomicUsize,
    stop: watch::Sender<bool>,
}

struct Worker {
    handle: Handle,
    /// Connections given to it and not yet ended.
    open: Arc<AtomicUsize>,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> std::io::Result<Self> {
        let stop = watch::Sender::new(false);
        let workers = (0..count.max(1))
            .map(|index| Worker::start(index, stop.subscribe()))
            .collect::<std::io::Result<_>>()?;
        Ok(Self { workers, next: AtomicUsize::new(0), stop })
    }

    /// One worker per CPU this process may run on.
    pub fn per_core() -> std::io::Result<Self> {
        Self::start(std::thread::available_parallelism().map_or(1, usize::from))
    }

    pub fn count(&self) -> usize {
        self.workers.len()
    }

    /// The runtimes, for tasks that must run on each (the liveness pulse).
    pub fn handles(&self) -> impl Iterator<Item = &Handle> {
        self.workers.iter().map(|w| &w.handle)
    }

    /// Serves `stream` on the worker with the fewest connections: `serve` gets the
    /// stream registered with that worker's runtime.
    pub fn serve<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => return warn!("cannot hand a connection to a worker: {err}"),
        };
        let worker = self.least_loaded();
        let open = OpenGuard::new(worker.open.clone());
        worker.handle.spawn(async move {
            let _open = open;
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(err) => warn!("cannot register a connection with its worker: {err}"),
            }
        });
    }

    fn least_loaded(&self) -> &Worker {
        // Ties go round robin, so a burst of connects spreads over the workers.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.workers.len();
        (0..n)
            .map(|i| &self.workers[(start + i) % n])
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
            .unwrap_or(&self.workers[0])
    }

    /// Stops every worker: the tasks still running on them are dropped.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Worker {
    fn start(index: usize, mut stop: watch::Receiver<bool>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new().name(format!("sockeye-worker-{index}")).spawn(move || {
            WORKER.with(|w| w.set(Some(index)));
            runtime.block_on(async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            });
        })?;
        Ok(Self { handle, open: Arc::default() })
    }
}

/// Counts a connection as open on its worker until dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{net::TcpListener, sync::mpsc};

    use super::*;

    /// A connected socket, as the accept loop would hand over.
    async fn accepted(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn connections_spread_over_the_workers_and_end_when_they_stop() {
        let workers = Workers::start(2).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (served, mut on) = mpsc::unbounded_channel();
        let (dropped, mut gone) = mpsc::unbounded_channel::<()>();
        let mut clients = Vec::new();
        for _ in 0..4 {
            let (client, stream) = accepted(&listener).await;
            clients.push(client);
            let (served, dropped) = (served.clone(), dropped.clone());
            workers.serve(stream, move |stream| async move {
                let _guard = OnDrop(dropped);
                served.send((current(), stream.local_addr().is_ok())).unwrap();
                std::future::pending::<()>().await;
            });
        }
        let mut per_worker = [0; 2];
        for _ in 0..4 {
            let (worker, registered) = on.recv().await.unwrap();
            assert!(registered, "the stream works on its worker");
            per_worker[worker.expect("served on a worker thread")] += 1;
        }
        assert_eq!(per_worker, [2, 2], "the least loaded worker takes the next connection");
        assert_eq!(current(), None, "the test's own thread is no worker");

        workers.stop();
        for _ in 0..4 {
            let ended = tokio::time::timeout(Duration::from_secs(5), gone.recv()).await;
            assert!(ended.is_ok(), "a connection outlived its stopped worker");
        }
    }

    struct OnDrop(mpsc::UnboundedSender<()>);

    impl Drop for OnDrop {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
}
