//! What the running daemon shares between its tasks: the current configuration snapshot
//! (swapped whole on reload), reload counters, and the eBPF dataplane.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwapOption;
use gateway_config::{CompileOptions, Compiled};
use tokio::sync::watch;

use crate::{
    backend_tls::BackendTlsConfigs,
    ebpf::{Attachment, Dataplane, DataplaneHandle, Flow, StatsTotal},
    tls::{SessionResumption, TlsBindings},
    worker::Workers,
};

/// One loaded configuration. Immutable; replaced whole on reload.
pub struct Snapshot {
    pub compiled: Compiled,
    /// The TLS server configs of `compiled.table`, built with it and swapped with it, so
    /// a rotated certificate reaches new handshakes with the same swap as the routes.
    pub tls: Arc<TlsBindings>,
    /// The backend TLS client configs of `compiled.table` (one per BackendTLSPolicy
    /// profile), built with it; unchanged profiles carry their session stores and verify
    /// caches over from the previous snapshot.
    pub backend_tls: Arc<BackendTlsConfigs>,
    /// `compiled.status` as JSON, rendered once per load for `/status` (with the
    /// certificate problems only building the TLS configs could find).
    pub status_json: serde_json::Value,
}

impl Snapshot {
    /// Builds the TLS configs of `compiled` (tickets and session cache from `sessions`,
    /// which outlive reloads; backend sessions and verify caches from `previous`) and
    /// renders the status.
    pub fn new(
        compiled: Compiled,
        sessions: &SessionResumption,
        previous: &BackendTlsConfigs,
    ) -> Self {
        let tls = Arc::new(TlsBindings::build(compiled.table.clone(), sessions));
        for problem in tls.problems() {
            tracing::warn!("{problem}");
        }
        let backend_tls = Arc::new(BackendTlsConfigs::build(&compiled.table, previous));
        let status_json = crate::tls::status::render(&compiled.status, &tls);
        Self {
            compiled,
            tls,
            backend_tls,
            status_json,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ConfigCounters {
    pub reloads: u64,
    pub errors: u64,
    pub last_ok: bool,
}

/// What `/metrics` shows of the dataplane.
pub struct EbpfSnapshot {
    pub attachments: Vec<Attachment>,
    pub stats: StatsTotal,
    pub flow_count: usize,
}

pub struct State {
    started: SystemTime,
    pub config_paths: Vec<PathBuf>,
    pub compile_options: CompileOptions,
    /// TLS ticket keys and session cache: one per process, so tickets survive reloads.
    sessions: SessionResumption,
    config: ArcSwapOption<Snapshot>,
    /// Publishes every snapshot that was swapped in, for the parts that must act on a new
    /// configuration (listeners to bind or close, eBPF maps to update).
    published: watch::Sender<Option<Arc<Snapshot>>>,
    reloads: AtomicU64,
    reload_errors: AtomicU64,
    last_ok: AtomicBool,
    last_error: Mutex<Option<String>>,
    dataplane: Mutex<Option<Dataplane>>,
    /// Which snapshot the listeners were last synced to, and what failed to bind then.
    listening: Mutex<ListenStatus>,
    /// The data-path workers, once started (their counters, draining).
    workers: std::sync::OnceLock<Arc<Workers>>,
}

/// The listeners' view for `/readyz`: ready only when every bind of the serving snapshot
/// is bound.
struct ListenStatus {
    /// The snapshot the listeners were synced to (compared by identity).
    synced: std::sync::Weak<Snapshot>,
    /// `None` when every bind was bound; otherwise what failed.
    problem: Option<String>,
}

impl State {
    pub fn new(
        config_paths: Vec<PathBuf>,
        compile_options: CompileOptions,
        sessions: SessionResumption,
    ) -> Arc<Self> {
        Arc::new(Self {
            started: SystemTime::now(),
            config_paths,
            compile_options,
            sessions,
            config: ArcSwapOption::empty(),
            published: watch::Sender::new(None),
            reloads: AtomicU64::new(0),
            reload_errors: AtomicU64::new(0),
            last_ok: AtomicBool::new(false),
            last_error: Mutex::new(None),
            dataplane: Mutex::new(None),
            listening: Mutex::new(ListenStatus {
                synced: std::sync::Weak::new(),
                problem: None,
            }),
            workers: std::sync::OnceLock::new(),
        })
    }

    pub fn start_time_unix(&self) -> f64 {
        self.started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default()
    }

    /// The current configuration, if one has loaded.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.config.load_full()
    }

    /// Loads the configuration from `config_paths`. On success the new snapshot replaces
    /// the old one whole; on failure the old one keeps serving and the error is kept for
    /// `/status` and counted for `/metrics`.
    pub fn reload(&self) -> Result<Arc<Snapshot>, gateway_config::LoadError> {
        match gateway_config::load(&self.config_paths, &self.compile_options) {
            Ok(compiled) => {
                for warning in &compiled.warnings {
                    tracing::warn!("{warning}");
                }
                let previous = self.snapshot().map(|s| s.backend_tls.clone());
                let previous = previous.unwrap_or_default();
                let snapshot = Arc::new(Snapshot::new(compiled, &self.sessions, &previous));
                self.config.store(Some(snapshot.clone()));
                self.published.send_replace(Some(snapshot.clone()));
                self.reloads.fetch_add(1, Ordering::Relaxed);
                self.last_ok.store(true, Ordering::Relaxed);
                *lock(&self.last_error) = None;
                Ok(snapshot)
            }
            Err(err) => {
                self.reload_errors.fetch_add(1, Ordering::Relaxed);
                self.last_ok.store(false, Ordering::Relaxed);
                *lock(&self.last_error) = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// A receiver that sees the current snapshot and every later one swapped in.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.published.subscribe()
    }

    pub fn config_counters(&self) -> ConfigCounters {
        ConfigCounters {
            reloads: self.reloads.load(Ordering::Relaxed),
            errors: self.reload_errors.load(Ordering::Relaxed),
            last_ok: self.last_ok.load(Ordering::Relaxed),
        }
    }

    /// `GET /status`: the status of the serving configuration, plus the last reload error
    /// when the newest input failed to load.
    pub fn status_report(&self) -> serde_json::Value {
        let mut report = match self.snapshot() {
            Some(snapshot) => snapshot.status_json.clone(),
            None => serde_json::json!({ "items": [] }),
        };
        if let (Some(error), Some(object)) =
            (lock(&self.last_error).clone(), report.as_object_mut())
        {
            object.insert("lastReloadError".into(), serde_json::Value::String(error));
        }
        report
    }

    /// `None` when ready (a configuration is loaded and every listener of it is bound);
    /// otherwise why not.
    pub fn not_ready_reason(&self) -> Option<String> {
        let Some(snapshot) = self.snapshot() else {
            return Some("no configuration loaded".into());
        };
        let listening = lock(&self.listening);
        if !std::ptr::eq(listening.synced.as_ptr(), Arc::as_ptr(&snapshot)) {
            return Some("listeners not bound yet".into());
        }
        listening.problem.clone()
    }

    /// The listeners report that they were synced to `snapshot`; `problem` names the binds
    /// that failed, `None` when all are bound.
    pub fn set_listeners_synced(&self, snapshot: &Arc<Snapshot>, problem: Option<String>) {
        *lock(&self.listening) = ListenStatus {
            synced: Arc::downgrade(snapshot),
            problem,
        };
    }

    pub fn set_dataplane(&self, dataplane: Option<Dataplane>) {
        *lock(&self.dataplane) = dataplane;
    }

    /// A handle on the dataplane's maps, while it runs.
    pub fn dataplane_handle(&self) -> Option<DataplaneHandle> {
        lock(&self.dataplane).as_ref().map(Dataplane::handle)
    }

    /// Records the data-path workers (once, at start).
    pub fn set_workers(&self, workers: Arc<Workers>) {
        let _ = self.workers.set(workers);
    }

    /// The data-path workers, once started.
    pub fn workers(&self) -> Option<&Arc<Workers>> {
        self.workers.get()
    }

    /// Detaches the eBPF programs (by dropping them).
    pub fn shutdown_dataplane(&self) {
        let dataplane = lock(&self.dataplane).take();
        drop(dataplane);
    }

    pub fn flows(&self) -> Vec<Flow> {
        lock(&self.dataplane)
            .as_ref()
            .map(Dataplane::flows)
            .unwrap_or_default()
    }

    pub fn ebpf_snapshot(&self) -> Option<EbpfSnapshot> {
        let guard = lock(&self.dataplane);
        let dataplane = guard.as_ref()?;
        Some(EbpfSnapshot {
            attachments: dataplane.attachments().to_vec(),
            stats: dataplane.stats().unwrap_or_default(),
            flow_count: dataplane.flow_count(),
        })
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data (a
/// counter, a message, map handles) is still consistent, so carry on with it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
