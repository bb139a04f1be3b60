//! Listeners: one listening socket per (bind, worker), all bound with `SO_REUSEPORT` so the
//! kernel spreads connections over the workers (the eBPF `sk_reuseport` program picks the
//! worker and `sk_lookup` steers address ranges to these sockets: [`Listeners::socket_fds`],
//! `ebpf::steer`).
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

use tokio::{sync::watch, task::AbortHandle};
use tracing::{debug, info, warn};

use crate::{
    state::{Snapshot, State},
    worker::{WorkerCtx, WorkerStats, Workers},
};

pub use socket::{bind_reuseport, bind_reuseport_range};

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
}

struct Bound {
    worker: usize,
    fd: RawFd,
    accept: AbortHandle,
}

/// Every listening socket of the data path.
pub struct Listeners {
    state: Arc<State>,
    workers: Arc<Workers>,
    bound: Mutex<BTreeMap<SocketAddr, Vec<Bound>>>,
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
            .flat_map(|(bind, sockets)| {
                sockets.iter().map(|s| SocketFd {
                    bind: *bind,
                    worker: s.worker,
                    fd: s.fd,
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
            bound.retain(|addr, sockets| {
                if wanted.contains(addr) {
                    return true;
                }
                for s in sockets.iter() {
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
                    Ok(sockets) => {
                        info!(bind = %addr, sockets = sockets.len(), "listening");
                        bound.insert(*addr, sockets);
                        changed = true;
                    }
                    Err(err) => {
                        warn!(bind = %addr, error = %err, "cannot listen");
                        problems.push(format!("cannot listen on {addr}: {err}"));
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

    /// One socket per worker on `addr`; all or none.
    fn bind(&self, addr: SocketAddr, range: bool) -> std::io::Result<Vec<Bound>> {
        let mut sockets = Vec::new();
        for w in self.workers.workers() {
            let socket = if range {
                bind_reuseport_range(addr)?
            } else {
                bind_reuseport(addr)?
            };
            sockets.push((w, socket));
        }
        Ok(sockets
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
            .collect())
    }

    /// Closes every listening socket (shutdown).
    pub fn close_all(&self) {
        let mut bound = lock(&self.bound);
        for sockets in bound.values() {
            for s in sockets {
                s.accept.abort();
            }
        }
        bound.clear();
        self.changed.send_modify(|g| *g += 1);
    }
}

/// Accepts on one socket of one worker until aborted.
async fn accept(
    listener: std::net::TcpListener,
    bind: SocketAddr,
    ctx: Arc<WorkerCtx>,
    stats: Arc<WorkerStats>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(err) => {
            warn!(%bind, error = %err, "cannot register the listening socket");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(crate::dispatch::connection(stream, peer, bind, ctx.clone()));
            }
            Err(err) => {
                // Out of file descriptors or memory: back off instead of spinning.
                debug!(%bind, error = %err, "accept failed");
                if !matches!(
                    err.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}
