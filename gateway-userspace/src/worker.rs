//! Data-path workers. The default is one worker per core: a thread running a
//! single-threaded Tokio runtime with its own `SO_REUSEPORT` listening socket per bind and
//! its own backend pools, so the request path takes no shared lock. `GATEWAYD_RUNTIME=shared`
//! runs the same code on one multi-thread Tokio runtime instead (kept for the comparison
//! in docs/benchmarks.md).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64},
        Arc, OnceLock,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use gateway_config::RouteTable;
use tokio::{runtime::Handle, sync::oneshot};

use crate::{
    backend_tls::BackendTlsConfigs,
    http,
    state::Snapshot,
    tls::TlsBindings,
    upstream::{PoolLimits, Upstreams},
};

/// How often idle backend connections past their timeout are closed, at most (more
/// often with an idle timeout under 10 s: every half of it, so that a connection outlives
/// its timeout by half of it at most).
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// The shortest sweep interval.
const SWEEP_MIN: Duration = Duration::from_millis(50);

/// What the workers are started with (`gatewayd run` flags).
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkerOptions {
    /// Which forwarding headers requests to backends get (`--forwarded-headers`).
    pub forwarded: http::ForwardedHeaders,
    /// The bounds of each worker's backend pools (`--backend-idle-timeout`,
    /// `--backend-max-connections`).
    pub pools: PoolLimits,
}

/// How the workers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeMode {
    /// One thread per worker, each with a current-thread runtime and its own pools.
    PerCore,
    /// One multi-thread runtime with N threads and shared pools.
    Shared,
}

impl RuntimeMode {
    /// `GATEWAYD_RUNTIME=shared` selects [`RuntimeMode::Shared`]; anything else is per core.
    pub fn from_env() -> Self {
        match std::env::var("GATEWAYD_RUNTIME").as_deref() {
            Ok("shared") => RuntimeMode::Shared,
            _ => RuntimeMode::PerCore,
        }
    }
}

/// One configuration as a worker serves it.
pub struct View {
    snapshot: Arc<Snapshot>,
}

impl View {
    /// The route table.
    pub fn table(&self) -> &RouteTable {
        &self.snapshot.compiled.table
    }

    /// The TLS server configs built with this table.
    pub fn tls(&self) -> &TlsBindings {
        &self.snapshot.tls
    }

    /// The backend TLS client configs built with this table.
    pub fn backend_tls(&self) -> &BackendTlsConfigs {
        &self.snapshot.backend_tls
    }
}

/// What one worker owns.
pub struct WorkerCtx {
    /// Worker index.
    pub id: usize,
    /// Backend pools.
    pub upstreams: Upstreams,
    /// The HTTP servers of client connections.
    pub(crate) servers: http::Servers,
    /// The current configuration; a per-worker copy so that reading it touches no
    /// reference count shared with other cores.
    view: ArcSwapOption<View>,
    /// Requests answered by this worker's tasks (`/metrics`).
    pub http: http::stats::HttpStats,
    /// Which forwarding headers requests to backends get (`--forwarded-headers`).
    pub forwarded: http::ForwardedHeaders,
}

impl WorkerCtx {
    fn new(id: usize, options: WorkerOptions) -> Self {
        WorkerCtx {
            id,
            forwarded: options.forwarded,
            http: http::stats::HttpStats::default(),
            upstreams: Upstreams::new(options.pools),
            servers: http::Servers::new(),
            view: ArcSwapOption::empty(),
        }
    }

    /// The configuration new requests use.
    pub fn view(&self) -> Option<Arc<View>> {
        self.view.load_full()
    }

    fn set_snapshot(&self, snapshot: &Arc<Snapshot>) {
        self.view.store(Some(Arc::new(View {
            snapshot: snapshot.clone(),
        })));
        self.upstreams.retire_stale_tls(&snapshot.backend_tls);
    }
}

/// What `/metrics` and the admin API show of one worker (per worker id, also when
/// workers share a runtime).
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Connections accepted on this worker's listening sockets.
    pub accepted: AtomicU64,
    /// Draining: the kernel gives it no new connections (`sk_reuseport_pick`); it keeps
    /// serving those it has. Set by `drain`.
    pub draining: AtomicBool,
}

/// A worker: where to spawn its tasks and what it owns.
pub struct Worker {
    /// Worker index.
    pub id: usize,
    /// Its runtime.
    pub handle: Handle,
    /// Its state.
    pub ctx: Arc<WorkerCtx>,
    /// Its counters.
    pub stats: Arc<WorkerStats>,
}

/// Every data-path worker.
pub struct Workers {
    workers: Vec<Worker>,
    mode: RuntimeMode,
    stops: std::sync::Mutex<Vec<oneshot::Sender<()>>>,
    _threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers with `options`.
    pub fn start(count: usize, mode: RuntimeMode, options: WorkerOptions) -> std::io::Result<Self> {
        let count = count.max(1);
        let mut workers = Vec::with_capacity(count);
        let mut stops = Vec::new();
        let mut threads = Vec::new();
        match mode {
            RuntimeMode::PerCore => {
                for id in 0..count {
                    let (handle, stop, thread) = spawn_runtime(id, None)?;
                    let ctx = Arc::new(WorkerCtx::new(id, options));
                    spawn_sweeper(&handle, ctx.clone());
                    workers.push(Worker {
                        id,
                        handle,
                        ctx,
                        stats: Arc::default(),
                    });
                    stops.push(stop);
                    threads.push(thread);
                }
            }
            RuntimeMode::Shared => {
                let (handle, stop, thread) = spawn_runtime(0, Some(count))?;
                let ctx = Arc::new(WorkerCtx::new(0, options));
                spawn_sweeper(&handle, ctx.clone());
                for id in 0..count {
                    workers.push(Worker {
                        id,
                        handle: handle.clone(),
                        ctx: ctx.clone(),
                        stats: Arc::default(),
                    });
                }
                stops.push(stop);
                threads.push(thread);
            }
        }
        Ok(Workers {
            workers,
            mode,
            stops: std::sync::Mutex::new(stops),
            _threads: threads,
        })
    }

    /// The workers, one listening socket per bind each.
    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    /// How they run.
    pub fn mode(&self) -> RuntimeMode {
        self.mode
    }

    /// Each worker context once: workers sharing a runtime share one.
    pub fn contexts(&self) -> Vec<&Arc<WorkerCtx>> {
        let mut contexts: Vec<&Arc<WorkerCtx>> = Vec::with_capacity(self.workers.len());
        for w in &self.workers {
            if !contexts.iter().any(|c| Arc::ptr_eq(c, &w.ctx)) {
                contexts.push(&w.ctx);
            }
        }
        contexts
    }

    /// New connections and requests use `snapshot` from now on.
    pub fn set_snapshot(&self, snapshot: &Arc<Snapshot>) {
        for ctx in self.contexts() {
            ctx.set_snapshot(snapshot);
        }
    }

    /// Stops every runtime (their connections end with them).
    pub fn shutdown(&self) {
        let stops = std::mem::take(
            &mut *self
                .stops
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for stop in stops {
            let _ = stop.send(());
        }
    }
}

fn spawn_runtime(
    id: usize,
    threads: Option<usize>,
) -> std::io::Result<(Handle, oneshot::Sender<()>, JoinHandle<()>)> {
    let phases = crate::phase::Mode::from_env();
    let phased = threads.is_none() && phases != crate::phase::Mode::Off;
    let runtime = match threads {
        None => {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.event_interval(event_interval()).enable_all();
            if phased {
                builder.on_thread_park(crate::phase::on_park);
            }
            builder.build()?
        }
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .thread_name("gatewayd-data")
            .enable_all()
            .build()?,
    };
    let handle = runtime.handle().clone();
    if phased {
        handle.spawn(crate::phase::run(phases));
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("gatewayd-w{id}"))
        .spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
            runtime.shutdown_timeout(Duration::from_millis(100));
        })?;
    Ok((handle, stop, thread))
}

/// Task polls between two looks at the I/O driver (`GATEWAYD_EVENT_INTERVAL`).
///
/// A round of ready connections takes about four polls a request once sends wait for
/// their phase (`crate::phase`). Tokio's default, 61, has the reactor looked at in the
/// middle of most rounds under load, and what it finds is mixed into the round; 200 lets
/// a round of ~50 requests finish first (`docs/benchmarks.md`, "Sends grouped by round").
fn event_interval() -> u32 {
    std::env::var("GATEWAYD_EVENT_INTERVAL")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(200)
}

fn spawn_sweeper(handle: &Handle, ctx: Arc<WorkerCtx>) {
    handle.spawn(async move {
        let every = (ctx.upstreams.idle_timeout() / 2).clamp(SWEEP_MIN, SWEEP_EVERY);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            ctx.upstreams.sweep();
        }
    });
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the process's data-path epoch (a cheap, monotonic clock for timers
/// that are checked lazily).
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// `at` as a [`now_ms`] value.
pub fn ms_at(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_millis()).unwrap_or(u64::MAX)
}

/// A [`now_ms`] value as a Tokio instant.
pub fn tokio_instant(ms: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(epoch() + Duration::from_millis(ms))
}
