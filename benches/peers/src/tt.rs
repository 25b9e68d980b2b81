//! The tokio-tungstenite servers of tt-server and tt-tls-server, over any stream (a
//! TCP socket, or a tokio-rustls stream over one). Echo is the crate's own example
//! (forward the stream into the sink, which batches writes until the stream is
//! pending). Broadcast: a tokio broadcast channel of `Message` (cheap `Bytes` clones);
//! each writer feeds what is ready, then flushes once. Rooms: the same client with the
//! channel of its request path's room ([`Rooms`]), the path read in the handshake
//! callback.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::Rooms;

/// A client's byte stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

pub async fn echo<S: Io>(stream: S) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
    let (write, read) = ws.split();
    let _ = read.try_filter(|m| std::future::ready(m.is_text() || m.is_binary())).forward(write).await;
}

pub async fn broadcast_client<S: Io>(stream: S, tx: broadcast::Sender<Message>) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
    serve_broadcast(ws, tx).await;
}

pub async fn room_client<S: Io>(stream: S, rooms: Arc<Rooms<Message>>) {
    let mut path = String::new();
    // The Result type is tungstenite's (its error is an HTTP response).
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        path = req.uri().path().to_owned();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
    let member = rooms.join(&path);
    serve_broadcast(ws, member.tx.clone()).await;
}

/// Each writer feeds what is ready, then flushes once.
async fn serve_broadcast<S: Io>(ws: WebSocketStream<S>, tx: broadcast::Sender<Message>) {
    let (mut write, mut read) = ws.split();
    let mut rx = tx.subscribe();
    let writer = tokio::spawn(async move {
        loop {
            let msg = match rx.recv().await {
                Ok(m) => m,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if write.feed(msg).await.is_err() {
                return;
            }
            loop {
                match rx.try_recv() {
                    Ok(m) => {
                        if write.feed(m).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                    Err(_) => break,
                }
            }
            if write.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = read.next().await {
        match msg {
            Message::Text(_) | Message::Binary(_) => {
                let _ = tx.send(msg);
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    writer.abort();
}
