//! `cargo xtask setup | build | demo | test | bench | fuzz`: the project's tasks.
//!
//! `setup` installs what building the eBPF programs needs and is idempotent; every other
//! task runs it first.

mod demo;
mod demo_tls;
mod fuzz;
mod pgo;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "gatewayd project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: llvm-22-dev (apt), bpf-linker 0.13.0, nightly rust-src,
    /// and the tools the tests use (iproute2, util-linux, libcap2-bin, curl).
    Setup,
    /// Build gatewayd (release) with its embedded eBPF object.
    Build {
        /// Profile-guided: an instrumented build serves a short pass of every case of
        /// ../shared/bench/anchors first (needs its tools; see `bench --anchors`). The
        /// binary is target/pgo/use/<host>/release/gatewayd.
        #[arg(long)]
        pgo: bool,
    },
    /// Start gatewayd on the example config with XDP on `lo`, make loopback traffic, print
    /// /flows and /metrics, show edge TLS and passthrough with curl (certificates made at
    /// start), and keep running until Ctrl-C.
    Demo {
        /// Stop after this many seconds instead of waiting for Ctrl-C.
        #[arg(long, value_name = "SECONDS")]
        seconds: Option<u64>,
    },
    /// Run every test: format and lint checks, unit tests, integration and eBPF tests.
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the criterion benches; with `--anchors`, run gatewayd side by side with HAProxy
    /// and nginx in ../shared/bench/anchors instead (MODES, SCENARIOS, PROXIES, DURATION
    /// and the harness's other knobs pass through the environment), gatewayd built
    /// profile-guided unless `--no-pgo`.
    Bench {
        /// Side-by-side load test against HAProxy and nginx (installs them if missing).
        #[arg(long)]
        anchors: bool,
        /// With `--anchors`: measure the plain release build, without the profile-guided
        /// build and its training run.
        #[arg(long)]
        no_pgo: bool,
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run every cargo-fuzz target (nightly; installs cargo-fuzz when missing) for a
    /// bounded time each.
    Fuzz {
        /// Seconds per target.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        seconds: u64,
    },
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs `cmd`, echoing it, and fails with its exit status.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", display(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", display(cmd));
    }
    Ok(())
}

pub fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// `cargo build -p gateway-userspace --bin gatewayd`, for the caller to add the profile,
/// target and environment.
fn gatewayd_build() -> Command {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "gateway-userspace", "--bin", "gatewayd"]);
    cmd
}

fn build_gatewayd(release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = gatewayd_build();
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    Ok(target_dir().join(profile).join("gatewayd"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Clippy on the kernel programs for the BPF target, where their code exists (on the host
/// `gateway-ebpf` is an empty `main`): nightly, `core` built from source, as
/// gateway-userspace/build.rs builds them.
fn clippy_ebpf() -> anyhow::Result<()> {
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "-p",
        "gateway-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ])
    .current_dir(workspace_root())
    .env("CARGO_TARGET_DIR", target_dir().join("ebpf-clippy"))
    // The stable toolchain's cargo and rustc, as `cargo xtask` was started with, must not
    // leak into the nightly build.
    .env_remove("RUSTC")
    .env_remove("RUSTC_WRAPPER")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .env_remove("RUSTUP_TOOLCHAIN")
    .env_remove("CARGO");
    run(&mut cmd)
}

fn test(args: &[String]) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    clippy_ebpf()?;
    // The integration tests drive the real binary; build it first so they find it.
    let gatewayd = build_gatewayd(false)?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--no-fail-fast"])
        .env("GATEWAYD_BIN", &gatewayd)
        // The eBPF tests must run, not skip, where the privileges allow it (CI is root).
        .env("GATEWAYD_REQUIRE_EBPF_TESTS", require_ebpf_tests());
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    run(&mut cmd)?;
    eprintln!("cargo xtask test: all passed in {:.0?}", started.elapsed());
    Ok(())
}

/// "1" when running as root, or when the caller already asks for it (`.ci/run` does): then
/// an eBPF test that cannot run is a failure, not a skip.
fn require_ebpf_tests() -> &'static str {
    if setup::is_root() || std::env::var("GATEWAYD_REQUIRE_EBPF_TESTS").as_deref() == Ok("1") {
        "1"
    } else {
        "0"
    }
}

/// The harness's `CANDIDATE_CMD` for a gatewayd binary (xtask/candidate.sh runs it).
fn candidate_cmd(gatewayd: &Path) -> String {
    format!(
        "GATEWAYD_BIN={} {}",
        gatewayd.display(),
        workspace_root().join("xtask/candidate.sh").display()
    )
}

/// The anchors harness: ../shared/bench/anchors, or `ANCHORS`.
fn anchors_harness() -> anyhow::Result<PathBuf> {
    let harness = std::env::var_os("ANCHORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/bench/anchors"));
    if !harness.exists() {
        bail!(
            "the anchors harness is not at {} (set ANCHORS=path/to/anchors)",
            harness.display()
        );
    }
    Ok(harness)
}

/// Runs ../shared/bench/anchors with gatewayd as the candidate (xtask/candidate.sh), by
/// default mode `http`, scenarios `ka close`, next to HAProxy and nginx; results go to
/// target/anchors/. `pgo`: the candidate is the profile-guided build ([`pgo::build`]).
fn anchors(pgo: bool) -> anyhow::Result<()> {
    let harness = anchors_harness()?;
    // The eBPF object is not needed: the candidate runs with --ebpf off.
    let gatewayd = if pgo {
        pgo::build(&harness, false)?
    } else {
        run(gatewayd_build().arg("--release").env("AYA_BUILD_SKIP", "1"))?;
        target_dir().join("release/gatewayd")
    };
    eprintln!(
        "anchors: the candidate is {} ({})",
        gatewayd.display(),
        if pgo {
            "profile-guided release build"
        } else {
            "release build"
        }
    );
    let results = target_dir().join("anchors");
    std::fs::create_dir_all(&results).with_context(|| format!("creating {}", results.display()))?;
    let candidate = candidate_cmd(&gatewayd);
    let env_or = |k: &str, v: &str| std::env::var(k).unwrap_or_else(|_| v.to_string());
    let mut cmd = Command::new(&harness);
    cmd.env("CANDIDATE_CMD", candidate)
        .env("CANDIDATE_NAME", "gatewayd")
        .env("MODES", env_or("MODES", "http"))
        .env("SCENARIOS", env_or("SCENARIOS", "ka close"))
        .env("PROXIES", env_or("PROXIES", "haproxy nginx gatewayd"))
        .env("RESULTS_DIR", &results);
    run(&mut cmd)?;
    eprintln!(
        "anchors: rows appended to {}/anchors-*.tsv",
        results.display()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Every task needs the toolchain and tools in place first.
    setup::setup()?;
    match cli.task {
        Task::Setup => Ok(()),
        Task::Build { pgo: false } => {
            let bin = build_gatewayd(true)?;
            eprintln!("built {}", bin.display());
            Ok(())
        }
        Task::Build { pgo: true } => {
            setup::setup_bench()?;
            let bin = pgo::build(&anchors_harness()?, true)?;
            eprintln!("built {}", bin.display());
            Ok(())
        }
        Task::Demo { seconds } => {
            let bin = build_gatewayd(true)?;
            demo::demo(&bin, seconds)
        }
        Task::Test { args } => test(&args),
        Task::Bench {
            anchors: true,
            no_pgo,
            ..
        } => {
            setup::setup_bench()?;
            anchors(!no_pgo)
        }
        Task::Bench { args, .. } => {
            let mut cmd = cargo();
            cmd.args(["bench", "-p", "gateway-benches"]);
            if !args.is_empty() {
                cmd.arg("--").args(&args);
            }
            run(&mut cmd)
        }
        Task::Fuzz { seconds } => fuzz::fuzz(seconds),
    }
}
