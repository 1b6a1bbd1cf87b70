//! A TCP proxy between the clients and one broker, for fault injection: it
//! forwards, refuses, black-holes (accepts and holds every byte, so clients
//! see timeouts rather than refusals) or delays, and can drop every
//! established connection. Loopback only.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards both ways.
    Forward,
    /// Closes every new connection at once and drops the established ones.
    Refuse,
    /// Accepts connections but forwards nothing, either way, until the mode
    /// changes; held bytes are then delivered.
    BlackHole,
    /// Forwards each read after this delay.
    Delay(Duration),
}

struct Shared {
    target: u16,
    mode: Mutex<Mode>,
    /// Both ends of every connection made, to drop them on demand.
    connections: Mutex<Vec<TcpStream>>,
    stopped: AtomicBool,
}

impl Shared {
    fn mode(&self) -> Mode {
        self.mode.lock().map_or(Mode::Forward, |m| *m)
    }

    fn drop_connections(&self) {
        if let Ok(mut connections) = self.connections.lock() {
            for stream in connections.drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

/// A running proxy; it stops, dropping its connections, when dropped.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target`.
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            target,
            mode: Mutex::new(Mode::Forward),
            connections: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                if accepting.mode() == Mode::Refuse {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", accepting.target)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                connect(&accepting, client, upstream);
            }
        });
        Proxy { port, shared }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Changes what the proxy does; [`Mode::Refuse`] also drops the
    /// established connections.
    pub fn set(&self, mode: Mode) {
        if let Ok(mut current) = self.shared.mode.lock() {
            *current = mode;
        }
        if mode == Mode::Refuse {
            self.shared.drop_connections();
        }
    }

    /// Closes every established connection, both ways.
    pub fn drop_connections(&self) {
        self.shared.drop_connections();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        self.shared.drop_connections();
        // Wakes the accepting thread so that it sees `stopped`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn connect(shared: &Arc<Shared>, client: TcpStream, upstream: TcpStream) {
    let clones = [&client, &upstream].map(|s| s.try_clone());
    let (Ok(client_write), Ok(upstream_write)) = (client.try_clone(), upstream.try_clone()) else { return };
    if let (Ok(mut connections), [Ok(a), Ok(b)]) = (shared.connections.lock(), clones) {
        connections.extend([a, b]);
    }
    for (from, to) in [(client, upstream_write), (upstream, client_write)] {
        let shared = shared.clone();
        std::thread::spawn(move || pump(&shared, from, to));
    }
}

/// Copies `from` to `to` as the mode says, until either end closes.
fn pump(shared: &Shared, mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        loop {
            match shared.mode() {
                Mode::BlackHole if !shared.stopped.load(Ordering::Relaxed) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Mode::Delay(delay) => {
                    std::thread::sleep(delay);
                    break;
                }
                _ => break,
            }
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
