//! Draining workers. A draining worker gets no new connections: `sk_reuseport_pick`
//! leaves it out when it picks the worker socket of a new connection, in every
//! `SO_REUSEPORT` group. It keeps accepting what is already queued on its sockets and
//! keeps serving its connections. `POST /workers/{n}/drain` and `/undrain` (admin API)
//! switch it; on shutdown every worker drains before the listening sockets close.
//!
//! Draining needs the `sk_reuseport` program (without it the kernel's hash spreads
//! connections over every worker); the last worker taking connections cannot drain
//! through the admin API, so the gateway never refuses every new connection by accident.

use serde::Serialize;
use std::sync::atomic::Ordering;
use tracing::{debug, info};

use crate::{ebpf::DrainRefused, state::State};

/// Why a drain request was refused.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("no worker {worker}: there are {workers} (0 to {last})", last = workers.saturating_sub(1))]
    NoSuchWorker { worker: usize, workers: usize },
    #[error("workers cannot drain without eBPF: the kernel's hash spreads new connections over every worker")]
    NoDataplane,
    #[error(transparent)]
    Refused(#[from] DrainRefused),
}

/// One worker as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkerReport {
    pub worker: usize,
    pub draining: bool,
    /// Connections accepted on its listening sockets.
    pub accepted: u64,
}

/// Every worker's state (empty before the workers start).
pub fn report(state: &State) -> Vec<WorkerReport> {
    state
        .workers()
        .map(|workers| {
            workers
                .workers()
                .iter()
                .map(|w| WorkerReport {
                    worker: w.id,
                    draining: w.stats.draining.load(Ordering::Relaxed),
                    accepted: w.stats.accepted.load(Ordering::Relaxed),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Drains `worker` (`draining`) or takes it back; the worker's new state. Blocking (map
/// writes): call it off the async runtime.
pub fn set(state: &State, worker: usize, draining: bool) -> Result<WorkerReport, DrainError> {
    let workers = state.workers().map_or(0, |w| w.workers().len());
    let Some(target) = state
        .workers()
        .and_then(|w| w.workers().iter().find(|w| w.id == worker))
    else {
        return Err(DrainError::NoSuchWorker { worker, workers });
    };
    let handle = state.dataplane_handle().ok_or(DrainError::NoDataplane)?;
    let changed = handle.set_draining(worker, draining, false)?;
    target.stats.draining.store(draining, Ordering::Relaxed);
    if changed {
        info!(
            worker,
            draining,
            "worker {}",
            if draining {
                "draining"
            } else {
                "takes new connections again"
            }
        );
    }
    Ok(WorkerReport {
        worker,
        draining,
        accepted: target.stats.accepted.load(Ordering::Relaxed),
    })
}

/// Shutdown: every worker drains, so that no new connection is queued on a listening
/// socket that is about to close (new connections are refused from here on). A no-op
/// without `sk_reuseport`.
pub fn drain_all(state: &State) {
    let (Some(workers), Some(handle)) = (state.workers(), state.dataplane_handle()) else {
        return;
    };
    if !handle.reuseport_on() {
        return;
    }
    for w in workers.workers() {
        match handle.set_draining(w.id, true, true) {
            Ok(_) => w.stats.draining.store(true, Ordering::Relaxed),
            Err(err) => debug!(worker = w.id, error = %err, "draining at shutdown failed"),
        }
    }
    info!("every worker draining: new connections are refused");
}
