//! A TLS handshake between a rustls client and server in memory (no sockets), for the
//! handshake benches (`tls`: gatewayd's server side; `backend_tls`: its client side).

use std::time::{Duration, Instant};

use rustls::{ClientConnection, ServerConnection};

/// Whose calls [`drive`] times.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// Moves records between `c` and `s` until both are done with the handshake; returns the
/// time spent in `timed`'s calls (its writes, reads and record processing).
pub fn drive(c: &mut ClientConnection, s: &mut ServerConnection, timed: Side) -> Duration {
    let mut spent = Duration::ZERO;
    let mut time = |side: Side, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        if side == timed {
            spent += t.elapsed();
        }
    };
    let mut buf = Vec::with_capacity(8 * 1024);
    loop {
        let mut moved = false;
        buf.clear();
        time(Side::Client, &mut || {
            while c.wants_write() {
                c.write_tls(&mut buf).expect("client write");
            }
        });
        if !buf.is_empty() {
            moved = true;
            time(Side::Server, &mut || {
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    s.read_tls(&mut rd).expect("server read");
                }
                s.process_new_packets().expect("server process");
            });
        }
        buf.clear();
        time(Side::Server, &mut || {
            while s.wants_write() {
                s.write_tls(&mut buf).expect("server write");
            }
        });
        if !buf.is_empty() {
            moved = true;
            time(Side::Client, &mut || {
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    c.read_tls(&mut rd).expect("client read");
                }
                c.process_new_packets().expect("client process");
            });
        }
        if !moved && !s.is_handshaking() && !c.is_handshaking() {
            return spent;
        }
    }
}
