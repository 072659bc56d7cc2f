//! The backend's streaming methods: `Fetch` (server streaming), `Upload` (client
//! streaming) and `Chat` (bidi, each chunk echoed as it arrives).

use std::{pin::Pin, sync::Arc, time::Duration};

use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::{Chunk, FetchRequest, UploadReply, backend::Backend};
use crate::pattern::Fnv;

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, Status>> + Send>>;

impl Backend {
    /// `count` chunks of `size` bytes, `interval_ms` apart. They are made as the
    /// client takes them (a channel of one): a slow reader slows the producer.
    pub(super) fn fetch(
        self: Arc<Self>,
        req: Request<FetchRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        self.count_call();
        let FetchRequest { count, size, interval_ms } = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let payload = vec![0x5a; size as usize];
            for seq in 0..count {
                if interval_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(u64::from(interval_ms))).await;
                }
                let chunk = Chunk { seq, payload: payload.clone(), backend: self.name().into() };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Reads every chunk, then answers with their count, size and checksum.
    pub(super) async fn upload(
        &self,
        req: Request<Streaming<Chunk>>,
    ) -> Result<Response<UploadReply>, Status> {
        self.count_call();
        let mut chunks = req.into_inner();
        let (mut count, mut bytes, mut checksum) = (0, 0, Fnv::default());
        while let Some(chunk) = chunks.message().await? {
            count += 1;
            bytes += chunk.payload.len() as u64;
            checksum.add(&chunk.payload);
            self.maybe_crash(count);
        }
        let backend = self.name().into();
        Ok(Response::new(UploadReply { backend, count, bytes, checksum: checksum.0 }))
    }

    /// Echoes each chunk as it arrives, with this backend's name.
    pub(super) fn chat(
        self: Arc<Self>,
        req: Request<Streaming<Chunk>>,
    ) -> Result<Response<ChunkStream>, Status> {
        self.count_call();
        let mut chunks = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut count = 0;
            loop {
                let reply = match chunks.message().await {
                    Ok(Some(mut chunk)) => {
                        count += 1;
                        self.maybe_crash(count);
                        chunk.backend = self.name().into();
                        Ok(chunk)
                    }
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
