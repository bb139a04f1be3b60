//! `gatewayd run` / `gatewayd check`. Process lifecycle only: parse the command line, load
//! the configuration, start the eBPF dataplane and the admin server, reload on change and
//! SIGHUP, and detach everything on SIGINT/SIGTERM.

use std::{process::ExitCode, sync::Arc};

use anyhow::Context as _;
use clap::Parser as _;
use gateway_config::CompileOptions;
use gateway_userspace::{
    admin,
    cli::{CheckArgs, Cli, Command, ConfigArgs, RunArgs},
    ebpf::{Dataplane, EbpfMode},
    listen::Listeners,
    reload::{self, Trigger},
    state::State,
    tls,
    worker::{RuntimeMode, Workers},
};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

/// mimalloc: per-thread free lists suit the many short-lived, same-sized allocations of a
/// request (header maps, body frames, futures); see docs/benchmarks.md, "Allocator".
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Command::Check(args) => check(&args),
        Command::Run(args) => run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("gatewayd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn compile_options(args: &ConfigArgs) -> CompileOptions {
    CompileOptions {
        controller_name: args.controller_name.clone(),
    }
}

fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    match gateway_config::load(&args.config.config, &compile_options(&args.config)) {
        Ok(compiled) => {
            for warning in &compiled.warnings {
                eprintln!("warning: {warning}");
            }
            // The certificate checks that need a crypto provider (a key that does not
            // match its certificate, a CA rustls cannot anchor to) are the ones `run`
            // makes, so that `check` prints the status `/status` would serve.
            let sessions =
                tls::SessionResumption::new().context("creating TLS session ticket keys")?;
            let bindings = tls::TlsBindings::build(compiled.table.clone(), &sessions);
            for problem in bindings.problems() {
                eprintln!("warning: {problem}");
            }
            let status = tls::status::render(&compiled.status, &bindings);
            let yaml = serde_yaml_ng::to_string(&status).context("rendering status as YAML")?;
            print!("{yaml}");
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("gatewayd check: the configuration is not valid:\n{err}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let workers = args
        .workers
        .map(usize::from)
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    // This runtime runs the control plane only (admin, reload, signals, eBPF); the data
    // path has its own `workers` threads (worker.rs).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.min(2))
        .thread_name("gatewayd-control")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(args, workers))
}

async fn serve(args: RunArgs, workers: usize) -> anyhow::Result<ExitCode> {
    // TLS ticket keys and session cache, once per process: tickets survive reloads.
    let sessions = tls::SessionResumption::new().context("creating TLS session ticket keys")?;
    let state = State::new(
        args.config.config.clone(),
        compile_options(&args.config),
        sessions,
    );

    // Refuse to start on an ill-formed configuration.
    if let Err(err) = state.reload() {
        eprintln!("gatewayd: refusing to start, the configuration is not valid:\n{err}");
        return Ok(ExitCode::FAILURE);
    }

    // Signals first, so that a TERM arriving during start-up still detaches cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;

    if args.ebpf == EbpfMode::Off && !args.xdp_iface.is_empty() {
        warn!("--xdp-iface ignored: --ebpf off");
    }
    let ifaces = if args.ebpf == EbpfMode::Off {
        Vec::new()
    } else {
        args.xdp_iface.clone()
    };
    // ---- eBPF dataplane options (filters, ACL file, pinning) ----
    let ebpf_options = match args.kernel.dataplane_options(&ifaces, workers) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("gatewayd: refusing to start: {err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if args.ebpf == EbpfMode::Off && args.kernel.filters_requested() {
        warn!("--xdp-drop-unlisted, --acl and --syn-rate-limit ignored: --ebpf off");
    }
    // ---- end eBPF dataplane options ----
    let dataplane = match tokio::task::spawn_blocking(move || {
        Dataplane::start_with_mode(args.ebpf, &ebpf_options)
    })
    .await
    .context("eBPF start-up task")?
    {
        Ok(dataplane) => dataplane,
        Err(err) => {
            eprintln!("gatewayd: eBPF is required (--ebpf required) but unavailable: {err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let ebpf_handle = dataplane.as_ref().map(Dataplane::handle);
    state.set_dataplane(dataplane);

    let listener = admin::bind(args.admin)
        .await
        .with_context(|| format!("binding the admin server on {}", args.admin))?;
    info!(admin = %args.admin, workers, ebpf = %args.ebpf, "gatewayd started");
    let admin_task = tokio::spawn(admin::serve(listener, state.clone()));

    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
    let reload_task = tokio::spawn(reload::run(state.clone(), reload_rx));

    // ---- eBPF map sync: listener table, ACL file, host addresses, flow GC ----
    let socket_handle = ebpf_handle.clone();
    let ebpf_sync_task = ebpf_handle.map(|handle| {
        gateway_userspace::ebpf::sync::spawn(handle, state.subscribe(), args.kernel.sync_options())
    });
    // ---- end eBPF map sync ----

    // ---- HTTP data path (listen/, http/, upstream/, worker.rs) ----
    // `listeners.socket_fds()` lists the listening sockets per (bind, worker), and
    // `listeners.subscribe()` ticks when they change.
    let data_workers = Arc::new(
        Workers::start(workers, RuntimeMode::from_env(), args.worker_options())
            .context("starting the data-path workers")?,
    );
    let listeners = Listeners::new(state.clone(), data_workers.clone());
    let listen_task = tokio::spawn(listeners.clone().run());
    // ---- end HTTP data path ----
    // ---- eBPF socket steering: sk_lookup and sk_reuseport follow the sockets ----
    state.set_workers(data_workers.clone());
    let socket_sync_task = socket_handle.map(|handle| {
        gateway_userspace::ebpf::sync::spawn_sockets(handle, state.clone(), listeners.clone())
    });
    // ---- end eBPF socket steering ----

    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => {
                info!("SIGHUP: reloading");
                if reload_tx.try_send(Trigger::Signal).is_err() {
                    warn!("a reload is already queued");
                }
            }
        }
    }

    // ---- eBPF socket steering: no new connection for sockets about to close ----
    let state_for_drain = Arc::clone(&state);
    let _ =
        tokio::task::spawn_blocking(move || gateway_userspace::drain::drain_all(&state_for_drain))
            .await;
    if let Some(task) = socket_sync_task {
        task.abort();
    }
    // ---- end eBPF socket steering ----
    admin_task.abort();
    reload_task.abort();
    // ---- eBPF map sync: stop before the programs detach ----
    if let Some(task) = ebpf_sync_task {
        task.abort();
    }
    // ---- end eBPF map sync ----
    // ---- HTTP data path: stop accepting, then stop the workers ----
    listen_task.abort();
    listeners.close_all();
    data_workers.shutdown();
    // ---- end HTTP data path ----
    let state_for_detach = Arc::clone(&state);
    if let Err(err) =
        tokio::task::spawn_blocking(move || state_for_detach.shutdown_dataplane()).await
    {
        error!(error = %err, "detaching eBPF programs failed");
    }
    if let Some(snapshot) = state.snapshot() {
        let t = snapshot.backend_tls.totals();
        if t.handshakes + t.handshake_failures > 0 {
            info!(
                handshakes = t.handshakes,
                resumed = t.resumed,
                failed = t.handshake_failures,
                full_validations = t.full_validations,
                verify_cache_hits = t.cache_hits,
                refused = t.verify_failures,
                "backend TLS since start"
            );
        }
    }
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}
