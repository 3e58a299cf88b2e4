//! A fault-injecting TCP proxy for loopback tests: a node connects to the
//! proxy, the proxy connects to the hub, and in between the test adds
//! latency, stalls the link (bytes held, connections open, as a Wi-Fi link
//! that stops passing traffic), cuts every open connection (as a hub or
//! router that goes away), or refuses new ones. The test machines' kernel
//! has no netem, so this is how a test makes the network bad without
//! privileges.
//!
//! Each direction of each connection is two threads: one reads and stamps
//! each chunk with its arrival time, the other writes it out once the delay
//! has passed and no stall holds it, so latency does not become a bandwidth
//! cap.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// What the proxy does to traffic right now.
#[derive(Clone, Copy, Debug, Default)]
struct Faults {
    /// Added one-way latency.
    delay: Duration,
    /// Hold all bytes until the stall ends.
    stalled: bool,
    /// Close new connections at once.
    refuse: bool,
}

#[derive(Default)]
struct Shared {
    faults: Mutex<Faults>,
    changed: Condvar,
    /// Both sockets of every connection, for `cut`.
    open: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
    accepted: AtomicU64,
    cuts: AtomicU64,
}

impl Shared {
    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap()
    }

    fn close_all(&self) {
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// A running proxy; dropping it closes everything.
pub struct Proxy {
    /// The port nodes connect to, on 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` (127.0.0.1).
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                accepting.accepted.fetch_add(1, Ordering::SeqCst);
                if accepting.faults().refuse {
                    continue;
                }
                // No hub behind the proxy: the node sees its connection closed, as with no listener.
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut open = accepting.open.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                pump(client.try_clone().unwrap(), server.try_clone().unwrap(), accepting.clone());
                pump(server, client, accepting.clone());
            }
        });
        Proxy { port, shared }
    }

    pub fn set_delay(&self, delay: Duration) {
        self.shared.faults().delay = delay;
        self.shared.changed.notify_all();
    }

    pub fn set_stalled(&self, stalled: bool) {
        self.shared.faults().stalled = stalled;
        self.shared.changed.notify_all();
    }

    pub fn set_refuse(&self, refuse: bool) {
        self.shared.faults().refuse = refuse;
    }

    /// Closes every open connection, in both directions.
    pub fn cut(&self) {
        self.shared.cuts.fetch_add(1, Ordering::SeqCst);
        self.shared.close_all();
    }

    /// Connections accepted so far (a node reconnecting shows up here).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let mut faults = self.shared.faults();
            faults.stalled = false;
        }
        self.shared.changed.notify_all();
        self.shared.close_all();
        // Wakes the accept loop so it sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Forwards `from` to `to` with the current faults, until either side closes.
fn pump(from: TcpStream, to: TcpStream, shared: Arc<Shared>) {
    let (tx, rx) = channel::<(Instant, Vec<u8>)>();
    let mut from = from;
    // When `from` closes, the writer finishes what it holds, then closes `to`.
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    thread::spawn(move || write_out(rx, to, shared));
}

fn write_out(rx: Receiver<(Instant, Vec<u8>)>, mut to: TcpStream, shared: Arc<Shared>) {
    for (arrived, chunk) in rx {
        let mut faults = shared.faults();
        loop {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            let due = arrived + faults.delay;
            let now = Instant::now();
            if faults.stalled {
                faults = shared.changed.wait(faults).unwrap();
            } else if now < due {
                // Latency is the fault being injected: wait it out, but wake for a change.
                faults = shared.changed.wait_timeout(faults, due - now).unwrap().0;
            } else {
                break;
            }
        }
        drop(faults);
        if to.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}
