//! A TCP relay between the service and a backend that a test can cut (connections dropped, new ones
//! refused) or turn into a black hole (connections accepted and held, nothing forwarded either way), the
//! way a dead peer behind a firewall looks.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const OPEN: u8 = 0;
const CUT: u8 = 1;
const BLACK_HOLE: u8 = 2;

pub struct Relay {
    pub port: u16,
    mode: Arc<AtomicU8>,
    /// Wakes the links so they stop forwarding (cut: close; black hole: hold).
    changed: Arc<Notify>,
    /// Sockets kept open and silent while in black-hole mode.
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let relay = Self { port, mode: Arc::default(), changed: Arc::default(), held: Arc::default() };
        let (mode, changed, held) = (relay.mode.clone(), relay.changed.clone(), relay.held.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                match mode.load(Ordering::SeqCst) {
                    CUT => continue, // dropped: the client sees the connection close
                    BLACK_HOLE => {
                        held.lock().unwrap().push(inbound);
                        continue;
                    }
                    _ => {}
                }
                let (upstream, mode, changed, held) = (upstream.clone(), mode.clone(), changed.clone(), held.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
                    let wake = changed.notified();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = wake => {}
                    }
                    if mode.load(Ordering::SeqCst) == BLACK_HOLE {
                        held.lock().unwrap().extend([inbound, outbound]);
                    }
                });
            }
        });
        relay
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.set(CUT);
    }

    /// Holds every connection, old and new, open and silent.
    pub fn black_hole(&self) {
        self.set(BLACK_HOLE);
    }

    /// Forwards again (held connections stay dead; clients open new ones).
    pub fn restore(&self) {
        self.mode.store(OPEN, Ordering::SeqCst);
        self.held.lock().unwrap().clear();
    }
}
