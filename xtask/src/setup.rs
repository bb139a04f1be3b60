//! `cargo xtask setup`: make this machine able to build and test gatewayd. Idempotent:
//! each step checks first and says whether it found or installed its piece.

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _};

use crate::{display, run};

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_PACKAGE: &str = "llvm-22-dev";

/// `(command, Debian package)` the tests and the demo call.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("setpriv", "util-linux"),
    ("capsh", "libcap2-bin"),
    ("curl", "curl"),
];

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}

fn have_command(name: &str) -> bool {
    output(Command::new("sh").args(["-c", &format!("command -v {name}")])).is_some()
}

/// Whether dpkg has the Debian package installed (not merely known or half-removed).
fn package_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.ends_with("install ok installed"))
}

fn report(piece: &str, what: &str) {
    eprintln!("setup: {piece}: {what}");
}

struct Apt {
    updated: bool,
}

impl Apt {
    fn install(&mut self, packages: &[&str], why: &str) -> anyhow::Result<()> {
        if !is_root() {
            bail!(
                "setup: {why} needs the Debian package(s) {} and installing them needs root: \
                 run `sudo apt-get install -y {}` or run `cargo xtask setup` as root",
                packages.join(" "),
                packages.join(" ")
            );
        }
        if !self.updated {
            run(Command::new("apt-get").args(["update", "-q"]))?;
            self.updated = true;
        }
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    }
}

pub fn setup() -> anyhow::Result<()> {
    let mut apt = Apt { updated: false };

    // Stable components for `cargo xtask test` (fmt and clippy checks).
    let installed = output(Command::new("rustup").args(["component", "list", "--installed"]))
        .unwrap_or_default();
    for component in ["rustfmt", "clippy"] {
        ensure_component(&installed, component)?;
    }

    // Nightly with rust-src builds the eBPF programs (-Z build-std=core).
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("setup: rustup is required (https://rustup.rs) and was not found")?;
    if toolchains.lines().any(|l| l.starts_with("nightly")) {
        report("nightly toolchain", "present");
    } else {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        report("nightly toolchain", "installed");
    }
    // rust-src builds `core` for the BPF target; clippy checks the kernel programs there.
    let nightly_components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    for component in ["rust-src", "clippy"] {
        if nightly_components.lines().any(|l| l.starts_with(component)) {
            report(&format!("nightly {component}"), "present");
        } else {
            run(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                "nightly",
            ]))?;
            report(&format!("nightly {component}"), "installed");
        }
    }

    // bpf-linker, built against LLVM 22. A bpf-linker that answers `--version` already has
    // its LLVM libraries; only building it needs the development package.
    let linker_version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if linker_version.contains(BPF_LINKER_VERSION) {
        report("bpf-linker", &format!("{BPF_LINKER_VERSION} present"));
    } else {
        if package_installed(LLVM_PACKAGE) {
            report(LLVM_PACKAGE, "present");
        } else {
            apt.install(&[LLVM_PACKAGE], "building bpf-linker")?;
            report(LLVM_PACKAGE, "installed");
        }
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX);
        run(&mut cmd).with_context(|| format!("setup: building bpf-linker ({})", display(&cmd)))?;
        report("bpf-linker", &format!("{BPF_LINKER_VERSION} installed"));
    }

    // Tools the integration tests and the demo call.
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(command, _)| !have_command(command))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        report("test tools (ip, setpriv, capsh, curl)", "present");
    } else {
        apt.install(&missing, "the integration tests")?;
        report("test tools", &format!("installed {}", missing.join(" ")));
    }
    Ok(())
}

/// `(command or file, Debian package)` the side-by-side benchmark (`cargo xtask bench
/// --anchors`, ../shared/bench/anchors) needs.
const BENCH_TOOLS: &[(&str, &str)] = &[
    ("haproxy", "haproxy"),
    ("nginx", "nginx"),
    (
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "libnginx-mod-stream",
    ),
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
    ("openssl", "openssl"),
    ("curl", "curl"),
];

/// Adds a stable toolchain component unless `installed` (`rustup component list
/// --installed`) lists it.
fn ensure_component(installed: &str, component: &str) -> anyhow::Result<()> {
    if installed.lines().any(|l| l.starts_with(component)) {
        report(component, "present");
    } else {
        run(Command::new("rustup").args(["component", "add", component]))?;
        report(component, "installed");
    }
    Ok(())
}

/// Installs what the anchors harness runs (HAProxy, nginx with the stream module, wrk,
/// h2load) and rustup's `llvm-tools`. Only `cargo xtask bench --anchors` and `cargo xtask
/// build --pgo` call it.
pub fn setup_bench() -> anyhow::Result<()> {
    // llvm-profdata, for the profile-guided build the side-by-side run measures.
    let installed = output(Command::new("rustup").args(["component", "list", "--installed"]))
        .unwrap_or_default();
    ensure_component(&installed, "llvm-tools")?;
    let missing: Vec<&str> = BENCH_TOOLS
        .iter()
        .filter(|(what, _)| {
            if what.starts_with('/') {
                !Path::new(what).exists()
            } else {
                !have_command(what)
            }
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        report("bench tools (haproxy, nginx, wrk, h2load)", "present");
        return Ok(());
    }
    let mut apt = Apt { updated: false };
    apt.install(&missing, "the side-by-side benchmark")?;
    report("bench tools", &format!("installed {}", missing.join(" ")));
    Ok(())
}
