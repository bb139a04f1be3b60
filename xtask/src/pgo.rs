//! Profile-guided optimization of the release `gatewayd` (`cargo xtask build --pgo`, and
//! `cargo xtask bench --anchors` unless `--no-pgo`).
//!
//! 1. An instrumented release build (`-Cprofile-generate`) into `target/pgo/generate`.
//! 2. The training run: that binary serves a short pass of every anchors case (all four
//!    modes, `ka`, `ka-h2`, `close`, `close-full`, 3 s each) with the harness's own
//!    clients and backends; nothing else runs. Its rows go to `target/pgo/training`, not
//!    with the results.
//! 3. `llvm-profdata` (rustup's `llvm-tools` component) merges the counts into
//!    `target/pgo/gatewayd.profdata`.
//! 4. The release build again with `-Cprofile-use`, into `target/pgo/use`: the code
//!    layout, inlining and branch order follow where the training spent its time.
//!
//! Both builds name the host target explicitly, so that the flags reach gatewayd's own
//! code and its dependencies but not build scripts or proc macros. docs/benchmarks.md
//! ("Profile-guided optimization") has what it changes.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::{candidate_cmd, gatewayd_build, run, target_dir};

/// Seconds per training case (after a one-second warm-up).
const TRAINING_SECONDS: &str = "3";

/// Builds the profile-guided release `gatewayd` and returns its path. `ebpf`: embed the
/// eBPF object (a binary to run), or not (the anchors candidate runs with `--ebpf off`).
pub fn build(harness: &Path, ebpf: bool) -> anyhow::Result<PathBuf> {
    let host = host_triple()?;
    let pgo = target_dir().join("pgo");
    let profiles = pgo.join("profiles");
    if profiles.exists() {
        std::fs::remove_dir_all(&profiles)
            .with_context(|| format!("removing {}", profiles.display()))?;
    }
    std::fs::create_dir_all(&profiles)
        .with_context(|| format!("creating {}", profiles.display()))?;

    let generate = release_build(
        &pgo.join("generate"),
        &host,
        &format!("-Cprofile-generate={}", profiles.display()),
        ebpf,
    )?;
    train(harness, &generate, &pgo.join("training"))?;

    let merged = pgo.join("gatewayd.profdata");
    let raw: Vec<PathBuf> = std::fs::read_dir(&profiles)
        .with_context(|| format!("reading {}", profiles.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "profraw"))
        .collect();
    if raw.is_empty() {
        bail!(
            "the training run left no profile in {} (did gatewayd exit cleanly?)",
            profiles.display()
        );
    }
    let mut merge = Command::new(llvm_profdata(&host)?);
    merge.arg("merge").arg("-o").arg(&merged).args(&raw);
    run(&mut merge)?;

    let optimized = release_build(
        &pgo.join("use"),
        &host,
        &format!(
            "-Cprofile-use={} -Cllvm-args=-pgo-warn-missing-function=false",
            merged.display()
        ),
        ebpf,
    )?;
    eprintln!(
        "pgo: built {} (profile {})",
        optimized.display(),
        merged.display()
    );
    Ok(optimized)
}

fn release_build(
    target: &Path,
    host: &str,
    rustflags: &str,
    ebpf: bool,
) -> anyhow::Result<PathBuf> {
    let mut cmd = gatewayd_build();
    cmd.args(["--release", "--target", host])
        .env("CARGO_TARGET_DIR", target)
        .env("RUSTFLAGS", rustflags)
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    if !ebpf {
        cmd.env("AYA_BUILD_SKIP", "1");
    }
    run(&mut cmd)?;
    Ok(target.join(host).join("release/gatewayd"))
}

/// The training run: the instrumented binary alone in every anchors case, briefly.
fn train(harness: &Path, gatewayd: &Path, results: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(results).with_context(|| format!("creating {}", results.display()))?;
    let mut cmd = Command::new(harness);
    cmd.env("CANDIDATE_CMD", candidate_cmd(gatewayd))
        .env("CANDIDATE_NAME", "gatewayd-training")
        .env("PROXIES", "gatewayd-training")
        .env("MODES", "http edge reencrypt passthrough")
        .env("SCENARIOS", "ka ka-h2 close close-full")
        .env("RUNS", "1")
        .env("DURATION", TRAINING_SECONDS)
        .env("WARMUP", "1")
        .env("RESULTS_DIR", results);
    run(&mut cmd)
}

fn host_triple() -> anyhow::Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("cannot run rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV names no host")
}

/// `llvm-profdata` of the stable toolchain's `llvm-tools` component (its LLVM is rustc's).
fn llvm_profdata(host: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("cannot run rustc --print sysroot")?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let tool = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-profdata");
    if !tool.exists() {
        bail!(
            "{} is missing: `rustup component add llvm-tools` installs it (cargo xtask setup does)",
            tool.display()
        );
    }
    Ok(tool)
}
