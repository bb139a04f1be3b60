//! The tasks that keep the kernel maps in step with the daemon: the listener table on
//! every configuration swapped in, the ACL file on change or SIGHUP, the host's addresses
//! every second (for `--xdp-drop-unlisted`), and idle flows out of the flow table
//! ([`spawn`]); and the listening sockets the socket programs steer to ([`spawn_sockets`]).
//!
//! Map writes are syscalls that can take a while on big tables, so they run on the
//! blocking pool; errors are logged and counted, and the task goes on.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{RecursiveMode, Watcher as _};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{debug, error, info, warn};

use super::{
    steer::{self, PlannedBind},
    Acl, DataplaneHandle,
};
use crate::{
    listen::Listeners,
    state::{Snapshot, State},
};

/// How often the host's addresses and port range are re-read.
const HOST_REFRESH: Duration = Duration::from_secs(1);
/// Quiet time after the last event on the ACL file before reading it.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Default `--flow-idle-timeout`.
pub const DEFAULT_FLOW_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// `--acl`: reloaded on change and on SIGHUP.
    pub acl_path: Option<PathBuf>,
    /// Flows idle for longer are deleted.
    pub flow_idle_timeout: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            acl_path: None,
            flow_idle_timeout: DEFAULT_FLOW_IDLE_TIMEOUT,
        }
    }
}

/// How often idle flows are looked for: half the timeout, within [250 ms, 30 s].
pub fn gc_interval(idle: Duration) -> Duration {
    (idle / 2).clamp(Duration::from_millis(250), Duration::from_secs(30))
}

/// Starts the task; abort the handle to stop it.
pub fn spawn(
    handle: DataplaneHandle,
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    options: SyncOptions,
) -> JoinHandle<()> {
    tokio::spawn(run(handle, snapshots, options))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => Some(value),
        Err(err) => {
            error!(error = %err, "eBPF map task failed");
            None
        }
    }
}

async fn sync_listeners(handle: &DataplaneHandle, snapshot: Option<Arc<Snapshot>>) {
    let Some(snapshot) = snapshot else { return };
    let handle = handle.clone();
    let result = blocking(move || {
        let table = &snapshot.compiled.table;
        handle
            .sync_listeners(table)
            .map(|report| (report, table.ebpf_plan().len()))
    })
    .await;
    match result {
        Some(Ok((report, listeners))) => {
            if report.overflow > 0 {
                warn!(
                    left_out = report.overflow,
                    "the kernel listener table is full: some listeners get no per-listener counters and their ports count as unlisted"
                );
            }
            info!(
                listeners,
                written = report.written,
                removed = report.removed,
                "eBPF listener table synced"
            );
        }
        Some(Err(err)) => error!("syncing the eBPF listener table failed: {err}"),
        None => {}
    }
}

async fn reload_acl(handle: &DataplaneHandle, path: &Path, why: &str) {
    let path = path.to_owned();
    let handle = handle.clone();
    let result = blocking(move || match Acl::load(&path) {
        Ok(acl) => handle
            .apply_acl(&acl)
            .map(|(added, removed)| (added, removed, acl.prefixes.len()))
            .map_err(|e| e.to_string()),
        Err(err) => {
            handle.acl_reload_failed();
            Err(format!("{err}; keeping the previous ACL"))
        }
    })
    .await;
    match result {
        Some(Ok((added, removed, prefixes))) => {
            info!(why, prefixes, added, removed, "ACL reloaded");
        }
        Some(Err(err)) => error!(why, "ACL reload failed: {err}"),
        None => {}
    }
}

/// Watches the directory of the ACL file (editors replace files by renaming) and sends
/// the paths of events.
fn watch_acl(
    path: &Path,
) -> Option<(notify::RecommendedWatcher, mpsc::UnboundedReceiver<PathBuf>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if matches!(event.kind, notify::EventKind::Access(_)) {
                    return;
                }
                for path in event.paths {
                    let _ = tx.send(path);
                }
            }
        }) {
            Ok(watcher) => watcher,
            Err(err) => {
                warn!(error = %err, "cannot watch the ACL file; reload it with SIGHUP");
                return None;
            }
        };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if let Err(err) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        warn!(dir = %dir.display(), error = %err, "cannot watch the ACL file's directory; reload it with SIGHUP");
        return None;
    }
    Some((watcher, rx))
}

async fn run(
    handle: DataplaneHandle,
    mut snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    options: SyncOptions,
) {
    let initial = snapshots.borrow_and_update().clone();
    sync_listeners(&handle, initial).await;

    let acl_file_name = options
        .acl_path
        .as_deref()
        .and_then(Path::file_name)
        .map(ToOwned::to_owned);
    let (_watcher, mut acl_events) = match options.acl_path.as_deref().and_then(watch_acl) {
        Some((watcher, rx)) => (Some(watcher), Some(rx)),
        None => (None, None),
    };
    let mut sighup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(err) => {
            warn!(error = %err, "cannot listen for SIGHUP; the ACL reloads on file changes only");
            None
        }
    };
    let mut host_tick = tokio::time::interval(HOST_REFRESH);
    host_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gc_tick = tokio::time::interval(gc_interval(options.flow_idle_timeout));
    gc_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let idle = options.flow_idle_timeout;

    loop {
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                sync_listeners(&handle, snapshot).await;
            }
            Some(()) = async { match sighup.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                if let Some(path) = options.acl_path.as_deref() {
                    reload_acl(&handle, path, "SIGHUP").await;
                }
            }
            Some(path) = async { match acl_events.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                if path.file_name() != acl_file_name.as_deref() {
                    continue;
                }
                // Wait for the writer to finish.
                if let Some(rx) = acl_events.as_mut() {
                    while let Ok(Some(_)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                }
                if let Some(acl_path) = options.acl_path.as_deref() {
                    reload_acl(&handle, acl_path, "file changed").await;
                }
            }
            _ = host_tick.tick() => {
                let handle = handle.clone();
                if let Some(Err(err)) = blocking(move || handle.refresh_host()).await {
                    warn!("refreshing the gateway's addresses failed: {err}");
                }
            }
            _ = gc_tick.tick() => {
                let handle = handle.clone();
                if let Some(evicted) = blocking(move || handle.collect_idle_flows(idle)).await {
                    if evicted > 0 {
                        debug!(evicted, "idle flows removed");
                    }
                }
            }
        }
    }
}

/// Starts the task that registers the listeners' sockets with the socket programs
/// (`sk_lookup` steering, `sk_reuseport` groups) whenever the sockets or the serving
/// configuration change; abort the handle to stop it.
pub fn spawn_sockets(
    handle: DataplaneHandle,
    state: Arc<State>,
    listeners: Arc<Listeners>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut sockets = listeners.subscribe();
        let mut snapshots = state.subscribe();
        loop {
            sockets.borrow_and_update();
            snapshots.borrow_and_update();
            sync_sockets(&handle, &state, &listeners).await;
            tokio::select! {
                changed = sockets.changed() => if changed.is_err() { return },
                changed = snapshots.changed() => if changed.is_err() { return },
            }
        }
    })
}

async fn sync_sockets(handle: &DataplaneHandle, state: &State, listeners: &Listeners) {
    let fds = listeners.socket_fds();
    let nonlocal: BTreeSet<SocketAddr> =
        fds.iter().filter(|s| s.nonlocal).map(|s| s.bind).collect();
    let binds: Vec<PlannedBind> = state
        .snapshot()
        .map(|snapshot| {
            snapshot
                .compiled
                .table
                .binds()
                .iter()
                .map(|b| PlannedBind {
                    addr: b.addr,
                    prefix_len: b.prefix_len,
                    nonlocal: nonlocal.contains(&b.addr),
                })
                .collect()
        })
        .unwrap_or_default();
    let sockets: Vec<_> = fds.iter().map(|s| (s.bind, s.worker, s.fd)).collect();
    let plan = steer::plan(&binds, &sockets);
    let handle = handle.clone();
    match blocking(move || handle.sync_sockets(&plan)).await {
        Some(Ok(report)) if report.registered + report.removed > 0 => {
            info!(
                registered = report.registered,
                removed = report.removed,
                prefixes = report.prefixes,
                "listening sockets registered with sk_lookup/sk_reuseport"
            );
        }
        Some(Ok(_)) | None => {}
        Some(Err(err)) => {
            error!("registering listening sockets with the socket programs failed: {err}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_runs_at_half_the_idle_timeout_within_bounds() {
        assert_eq!(
            gc_interval(Duration::from_secs(300)),
            Duration::from_secs(30)
        );
        assert_eq!(gc_interval(Duration::from_secs(10)), Duration::from_secs(5));
        assert_eq!(
            gc_interval(Duration::from_millis(100)),
            Duration::from_millis(250)
        );
    }
}
