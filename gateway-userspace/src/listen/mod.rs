//! Listeners: one listening socket per (bind, worker), all bound with `SO_REUSEPORT` so the
//! kernel spreads connections over the workers (the eBPF `sk_reuseport` program picks the
//! worker and `sk_lookup` steers address ranges to these sockets: [`Listeners::socket_fds`],
//! `ebpf::steer`).
//!
//! A bind on one address the host has is a plain bind. One the host does not have
//! (`EADDRNOTAVAIL`) is bound with `IP_FREEBIND` and served like a one-address range,
//! through `sk_lookup`, when that program runs; without it the bind fails, naming the
//! address and its listeners. An address range is always bound with `IP_FREEBIND` on its
//! first address.
//!
//! [`Listeners::run`] follows every snapshot the [`State`] publishes: it hands the new
//! table to the workers, binds the binds that are new, and closes the ones that are gone.
//! Closing a listening socket stops new connections only; established connections keep
//! running (their requests use the newest table that still has their bind, else the one
//! they were accepted under).

mod socket;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    os::fd::{AsRawFd as _, RawFd},
    sync::{atomic::Ordering, Arc, Mutex, MutexGuard, Weak},
    time::Duration,
};

use tokio::{
    io::{unix::AsyncFd, Interest},
    net::TcpStream,
    sync::watch,
    task::AbortHandle,
};
use tracing::{debug, info, warn};

use crate::{
    state::{Snapshot, State},
    worker::{WorkerCtx, WorkerStats, Workers},
};

pub use socket::{bind_reuseport, bind_reuseport_freebind, is_address_not_available};

/// Binds that failed are tried again this often (and the serving snapshot is checked).
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// A listening socket as the eBPF side needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketFd {
    /// The bind (address and port) the socket listens on.
    pub bind: SocketAddr,
    /// The worker that accepts on it.
    pub worker: usize,
    /// The socket's file descriptor; valid while the bind is in the table.
    pub fd: RawFd,
    /// The bind is one address the host does not have, bound with `IP_FREEBIND`: only
    /// `sk_lookup` steering brings it connections.
    pub nonlocal: bool,
}

struct Bound {
    worker: usize,
    fd: RawFd,
    accept: AbortHandle,
}

/// The sockets of one bind.
struct Held {
    sockets: Vec<Bound>,
    /// See [`SocketFd::nonlocal`].
    nonlocal: bool,
}

/// Why a bind has no sockets.
#[derive(Debug, thiserror::Error)]
enum BindError {
    #[error("the host has no address {addr} ({source}); an address the host does not have is served through eBPF sk_lookup steering, which is not running (--ebpf off, or refused at start-up: see the eBPF warning)")]
    NotLocal {
        addr: std::net::IpAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Every listening socket of the data path.
pub struct Listeners {
    state: Arc<State>,
    workers: Arc<Workers>,
    bound: Mutex<BTreeMap<SocketAddr, Held>>,
    changed: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Listeners {
    /// Listeners for `workers`, following `state`.
    pub fn new(state: Arc<State>, workers: Arc<Workers>) -> Arc<Self> {
        Arc::new(Listeners {
            state,
            workers,
            bound: Mutex::new(BTreeMap::new()),
            changed: watch::Sender::new(0),
        })
    }

    /// Every listening socket, per (bind, worker).
    pub fn socket_fds(&self) -> Vec<SocketFd> {
        lock(&self.bound)
            .iter()
            .flat_map(|(bind, held)| {
                held.sockets.iter().map(|s| SocketFd {
                    bind: *bind,
                    worker: s.worker,
                    fd: s.fd,
                    nonlocal: held.nonlocal,
                })
            })
            .collect()
    }

    /// Ticks (a generation number) every time the set of sockets changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Follows the published snapshots until the task is dropped.
    ///
    /// It syncs to the serving snapshot (`State::snapshot`, the one `/readyz` compares
    /// with), woken by every publication and, in any case, every [`RETRY_EVERY`]: a failed
    /// bind is retried, and a publication it did not see cannot leave it behind.
    pub async fn run(self: Arc<Self>) {
        let mut snapshots = self.state.subscribe();
        let mut synced: Weak<Snapshot> = Weak::new();
        let mut failing = false;
        loop {
            snapshots.borrow_and_update();
            if let Some(snapshot) = self.state.snapshot() {
                if failing || !std::ptr::eq(synced.as_ptr(), Arc::as_ptr(&snapshot)) {
                    failing = !self.sync(&snapshot);
                    synced = Arc::downgrade(&snapshot);
                }
            }
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(RETRY_EVERY) => {}
            }
        }
    }

    /// Makes the sockets match `snapshot`'s binds; `true` when every bind is bound.
    pub fn sync(&self, snapshot: &Arc<Snapshot>) -> bool {
        self.workers.set_snapshot(snapshot);
        let wanted: BTreeSet<SocketAddr> = snapshot
            .compiled
            .table
            .binds()
            .iter()
            .map(|b| b.addr)
            .collect();
        // Address ranges are bound on their first address, which the host need not have.
        let ranges: BTreeSet<SocketAddr> = snapshot
            .compiled
            .table
            .binds()
            .iter()
            .filter(|b| b.prefix_len.is_some())
            .map(|b| b.addr)
            .collect();
        let mut problems = Vec::new();
        let mut changed = false;
        {
            let mut bound = lock(&self.bound);
            bound.retain(|addr, held| {
                if wanted.contains(addr) {
                    return true;
                }
                for s in &held.sockets {
                    s.accept.abort();
                }
                info!(bind = %addr, "listener closed");
                changed = true;
                false
            });
            for addr in &wanted {
                if bound.contains_key(addr) {
                    continue;
                }
                match self.bind(*addr, ranges.contains(addr)) {
                    Ok(held) => {
                        if held.nonlocal {
                            info!(bind = %addr, sockets = held.sockets.len(), "listening on an address the host does not have (IP_FREEBIND), served through sk_lookup");
                        } else {
                            info!(bind = %addr, sockets = held.sockets.len(), "listening");
                        }
                        bound.insert(*addr, held);
                        changed = true;
                    }
                    Err(err) => {
                        let listeners = listener_names(snapshot, *addr);
                        warn!(bind = %addr, listeners = %listeners, error = %err, "cannot listen");
                        problems.push(format!("cannot listen on {addr} for {listeners}: {err}"));
                    }
                }
            }
        }
        let ok = problems.is_empty();
        self.state
            .set_listeners_synced(snapshot, (!ok).then(|| problems.join("; ")));
        if changed {
            self.changed.send_modify(|g| *g += 1);
        }
        ok
    }

    /// One socket per worker on `addr`; all or none. A range's first address, and an
    /// address the host does not have while `sk_lookup` steering runs, are bound with
    /// `IP_FREEBIND`.
    fn bind(&self, addr: SocketAddr, range: bool) -> Result<Held, BindError> {
        let mut sockets = Vec::new();
        let mut nonlocal = false;
        for w in self.workers.workers() {
            let socket = if range || nonlocal {
                bind_reuseport_freebind(addr)?
            } else {
                match bind_reuseport(addr) {
                    Err(err) if is_address_not_available(&err) => {
                        if !self.steering_on() {
                            return Err(BindError::NotLocal {
                                addr: addr.ip(),
                                source: err,
                            });
                        }
                        nonlocal = true;
                        bind_reuseport_freebind(addr)?
                    }
                    other => other?,
                }
            };
            sockets.push((w, socket));
        }
        let sockets = sockets
            .into_iter()
            .map(|(w, listener)| {
                let fd = listener.as_raw_fd();
                let task = w
                    .handle
                    .spawn(accept(listener, addr, w.ctx.clone(), w.stats.clone()));
                Bound {
                    worker: w.id,
                    fd,
                    accept: task.abort_handle(),
                }
            })
            .collect();
        Ok(Held { sockets, nonlocal })
    }

    /// Whether the kernel's `sk_lookup` program runs and can steer an address the host does
    /// not have to a socket.
    fn steering_on(&self) -> bool {
        self.state
            .dataplane_handle()
            .is_some_and(|dataplane| dataplane.steering_on())
    }

    /// Closes every listening socket (shutdown).
    pub fn close_all(&self) {
        let mut bound = lock(&self.bound);
        for held in bound.values() {
            for s in &held.sockets {
                s.accept.abort();
            }
        }
        bound.clear();
        self.changed.send_modify(|g| *g += 1);
    }
}

/// `listener http of Gateway default/gw, ...`: the listeners `snapshot` serves on `bind`.
fn listener_names(snapshot: &Snapshot, bind: SocketAddr) -> String {
    let table = &snapshot.compiled.table;
    let names: Vec<String> = table
        .binds()
        .iter()
        .filter(|b| b.addr == bind)
        .flat_map(|b| b.listeners.iter())
        .filter_map(|id| table.listener(*id))
        .map(|l| format!("listener {} of Gateway {}", l.name, l.gateway))
        .collect();
    if names.is_empty() {
        "no listener".to_owned()
    } else {
        names.join(", ")
    }
}

/// Accepts on one socket of one worker until aborted.
///
/// The listening socket is polled as an [`AsyncFd`] and accepted from with mio
/// (`accept4` with `SOCK_NONBLOCK | SOCK_CLOEXEC`), not through Tokio's `TcpListener`:
/// Tokio marks an accepted stream readable before any event, so its first read is a
/// `recvfrom` on a socket whose request has usually not arrived yet (`EAGAIN` for 96 %
/// of the connections of the `close` benchmark). A stream registered from the accepted
/// socket waits for its first readiness event instead, as nginx does; a request that
/// was already there is reported by that same registration at once.
async fn accept(
    listener: std::net::TcpListener,
    bind: SocketAddr,
    ctx: Arc<WorkerCtx>,
    stats: Arc<WorkerStats>,
) {
    let listener = mio::net::TcpListener::from_std(listener);
    // SAFETY: the `AsyncFd` owns the mio listener, which owns its descriptor: it stays
    // open, and `as_raw_fd` returns that same descriptor, until the `AsyncFd` is dropped.
    #[allow(unsafe_code)]
    let registered = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) };
    let listener = match registered {
        Ok(l) => l,
        Err(err) => {
            warn!(%bind, error = %err, "cannot register the listening socket");
            return;
        }
    };
    loop {
        let mut ready = match listener.readable().await {
            Ok(ready) => ready,
            Err(err) => {
                warn!(%bind, error = %err, "the listening socket cannot be polled");
                return;
            }
        };
        // Until it would block; then `try_io` clears the readiness and the loop waits.
        while let Ok(accepted) = ready.try_io(|l| l.get_ref().accept()) {
            let (stream, peer) = match accepted
                .and_then(|(s, peer)| Ok((TcpStream::from_std(s.into())?, peer)))
            {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors or memory: back off instead of spinning.
                    debug!(%bind, error = %err, "accept failed");
                    if !matches!(
                        err.kind(),
                        std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                    ) {
                        drop(ready);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        break;
                    }
                    continue;
                }
            };
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            // Boxed: the task then holds a pointer, and the connection's state (a few
            // KiB) is not copied again when the task is created and when it completes.
            tokio::spawn(Box::pin(crate::dispatch::connection(
                stream,
                peer,
                bind,
                ctx.clone(),
            )));
        }
    }
}
