//! tokio-tungstenite echo, broadcast and rooms server on one current-thread runtime;
//! the servers themselves are `mioket_peers::tt`, shared with tt-tls-server.

use mioket_peers::tt::{broadcast_client, echo, room_client};
use mioket_peers::{announce, args, Mode, Rooms};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

fn main() {
    let args = args();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind(args.addr).await.unwrap();
        announce(listener.local_addr().unwrap());
        let (tx, _) = broadcast::channel::<Message>(4096);
        let rooms = Rooms::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            match args.mode {
                Mode::Echo => tokio::spawn(echo(stream)),
                Mode::Broadcast => tokio::spawn(broadcast_client(stream, tx.clone())),
                Mode::Rooms => tokio::spawn(room_client(stream, rooms.clone())),
            };
        }
    });
}
