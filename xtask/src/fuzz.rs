//! `cargo xtask fuzz [--seconds N]`: run the cargo-fuzz targets of `fuzz/` for a bounded time.
//!
//! cargo-fuzz needs nightly (libFuzzer, `-Z sanitizer`); the `nightly` toolchain the eBPF
//! build uses serves. cargo-fuzz itself is installed from crates.io when missing. The
//! corpus grows in `fuzz/corpus/<target>` (ignored by git), seeded from
//! `fuzz/seeds/<target>`; a crash leaves its input in `fuzz/artifacts/<target>` and fails.

use std::process::Command;

use anyhow::Context as _;

use crate::{run, workspace_root};

/// The targets, each with the longest input worth trying.
const TARGETS: &[(&str, usize)] = &[
    // ClientHello peek: the peek bound (18 KiB) plus a little.
    ("client_hello", 20 * 1024),
];

/// `cargo` through rustup, so that `+nightly` selects the toolchain.
fn rustup_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTFLAGS");
    cmd
}

fn cargo_fuzz_installed() -> bool {
    rustup_cargo()
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn fuzz(seconds: u64) -> anyhow::Result<()> {
    if !cargo_fuzz_installed() {
        eprintln!("cargo-fuzz is missing: installing it");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let fuzz_dir = workspace_root().join("fuzz");
    for (target, max_len) in TARGETS {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
        let seeds = fuzz_dir.join("seeds").join(target);
        let mut cmd = rustup_cargo();
        cmd.args(["+nightly", "fuzz", "run", "--fuzz-dir"])
            .arg(&fuzz_dir)
            .arg(target)
            .arg(&corpus);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-max_len={max_len}"))
            .arg("-print_final_stats=1");
        run(&mut cmd).with_context(|| format!("fuzz target {target} failed"))?;
        eprintln!("fuzz target {target}: no crash in {seconds} s");
    }
    Ok(())
}
