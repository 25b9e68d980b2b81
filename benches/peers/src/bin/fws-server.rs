//! fastwebsockets echo/broadcast server on one current-thread runtime, upgraded
//! through hyper as the crate documents. Echo is the crate's echo_server example
//! (FragmentCollector, auto pong and close). Broadcast: the split halves (feature
//! unstable-split), a tokio broadcast channel of `Bytes`, and a BufWriter on the write
//! half flushed once per batch of ready messages. Rooms: the same client with the
//! channel of its request path's room (`mioket_peers::Rooms`).

use bytes::Bytes;
use fastwebsockets::{upgrade, FragmentCollector, FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use mioket_peers::{announce, args, Mode, Rooms};
use tokio::io::BufWriter;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

async fn echo(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = FragmentCollector::new(fut.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn broadcast_client(
    fut: upgrade::UpgradeFut,
    tx: broadcast::Sender<(bool, Bytes)>,
) -> Result<(), WebSocketError> {
    let ws = fut.await?;
    let (rx_half, mut out) = ws.split(|s| {
        let (r, w) = tokio::io::split(s);
        (r, BufWriter::with_capacity(64 * 1024, w))
    });
    let mut reader = FragmentCollectorRead::new(rx_half);
    let mut rx = tx.subscribe();
    // Control answers (pong, close reply) go through the same writer.
    let (ctl_tx, mut ctl_rx) = tokio::sync::mpsc::unbounded_channel::<(OpCode, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        loop {
            let (text, bytes) = tokio::select! {
                m = rx.recv() => match m {
                    Ok(m) => m,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                c = ctl_rx.recv() => {
                    let Some((op, payload)) = c else { return };
                    let frame = Frame::new(true, op, None, Payload::Owned(payload));
                    if out.write_frame(frame).await.is_err() || out.flush().await.is_err() { return; }
                    continue;
                }
            };
            let mut next = Some((text, bytes));
            while let Some((text, bytes)) = next.take() {
                let payload = Payload::Borrowed(&bytes);
                let frame = if text { Frame::text(payload) } else { Frame::binary(payload) };
                if out.write_frame(frame).await.is_err() {
                    return;
                }
                next = match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => rx.try_recv().ok(),
                    Err(_) => None,
                };
            }
            if out.flush().await.is_err() {
                return;
            }
        }
    });
    loop {
        let ctl = ctl_tx.clone();
        let frame = reader
            .read_frame(&mut move |f: Frame| {
                let _ = ctl.send((f.opcode, f.payload.to_vec()));
                std::future::ready(Ok::<(), WebSocketError>(()))
            })
            .await;
        let Ok(frame) = frame else { break };
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => {
                let _ = tx.send((frame.opcode == OpCode::Text, Bytes::copy_from_slice(&frame.payload)));
            }
            _ => {}
        }
    }
    // Let the close reply go out, then stop the writer.
    tokio::task::yield_now().await;
    writer.abort();
    Ok(())
}

fn main() {
    let args = args();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind(args.addr).await.unwrap();
        announce(listener.local_addr().unwrap());
        let (tx, _) = broadcast::channel::<(bool, Bytes)>(4096);
        let rooms = Rooms::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let mode = args.mode;
            let tx = tx.clone();
            let rooms = rooms.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let service = service_fn(move |mut req: Request<Incoming>| {
                    let tx = tx.clone();
                    let rooms = rooms.clone();
                    async move {
                        let path = if mode == Mode::Rooms { req.uri().path().to_owned() } else { String::new() };
                        let (response, fut) = upgrade::upgrade(&mut req)?;
                        tokio::spawn(async move {
                            let _ = match mode {
                                Mode::Echo => echo(fut).await,
                                Mode::Broadcast => broadcast_client(fut, tx).await,
                                Mode::Rooms => {
                                    let member = rooms.join(&path);
                                    broadcast_client(fut, member.tx.clone()).await
                                }
                            };
                        });
                        Ok::<Response<Empty<Bytes>>, WebSocketError>(response)
                    }
                });
                let _ = http1::Builder::new().serve_connection(io, service).with_upgrades().await;
            });
        }
    });
}
