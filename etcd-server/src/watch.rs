//! The Watch gRPC service (etcd's `v3rpc/watch.go`): one bidirectional
//! stream per call, driven by an [`etcd_core::WatchStream`].
//!
//! One task per stream reads client requests and writes responses; when the
//! client stops reading, the task waits on the send, the stream's queue in
//! the engine fills and its watchers are parked (resumed later from
//! history), so a slow client never slows down the member. The stream ends
//! when the client goes away, or with "server stopped" when the member
//! begins stopping. A client that half-closes
//! its side keeps receiving, as with etcd.

use crate::rpc::etcdserverpb::watch_server::Watch;
use crate::status::learner_guard;
use etcd_core::pb::etcdserverpb::{WatchRequest, WatchResponse};
use etcd_core::Etcd;
use tonic::{Request, Response, Status, Streaming};

/// Responses buffered between the stream task and the HTTP/2 sender.
const SEND_BUFFER: usize = 16;

/// Watch service.
#[derive(Clone)]
pub struct WatchService(pub Etcd);

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        learner_guard(&self.0)?;
        let ws_ctx = crate::request_context::of(&req);
        let mut inbound = req.into_inner();
        let mut ws = self.0.watch(&ws_ctx);
        let (tx, rx) = tokio::sync::mpsc::channel(SEND_BUFFER);
        tokio::spawn(async move {
            let mut reading = true;
            loop {
                tokio::select! {
                    r = inbound.message(), if reading => match r {
                        Ok(Some(req)) => ws.request(req),
                        Ok(None) => reading = false,
                        Err(_) => break,
                    },
                    resp = ws.recv() => match resp {
                        Some(r) => {
                            if tx.send(Ok(r)).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    () = tx.closed() => break,
                }
            }
        });
        Ok(Response::new(crate::status::until_stopping(
            &self.0,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
