//! `--ebpf auto|off|required` as an operator sees them, with and without the privileges
//! BPF needs, and clean exits on SIGINT/SIGTERM.
//!
//! These run gatewayd in the host's network namespace: each one that loads the programs
//! pins nothing on the host (`--bpf-pin-dir none`, or a bpffs of its own).

#[macro_use]
mod support;

use std::{process::Command, time::Duration};

use gateway_tests::{gatewayd_bin, write_config, Gatewayd, EMPTY_CONFIG};
use nix::sys::signal::Signal;
use support::Bpffs;

/// `gatewayd` run through capsh with the BPF-related capabilities dropped from the
/// bounding set: what an unprivileged service account gets.
fn without_bpf_privileges() -> Command {
    let mut cmd = Command::new("capsh");
    cmd.args([
        "--drop=cap_bpf,cap_sys_admin,cap_perfmon,cap_net_admin",
        "--",
        "-c",
        "exec \"$0\" \"$@\"",
    ])
    .arg(gatewayd_bin());
    cmd
}

fn config() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), "config.yaml", EMPTY_CONFIG);
    (dir, path.to_string_lossy().into_owned())
}

fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn ebpf_required_without_privileges_exits_non_zero_with_the_kernels_reason() {
    // Dropping capabilities needs to start as root.
    require_ebpf!("ebpf_required_without_privileges_exits_non_zero_with_the_kernels_reason");
    let (_dir, config) = config();
    let mut gw = Gatewayd::start_with(
        without_bpf_privileges(),
        &[
            "--config",
            &config,
            "--ebpf",
            "required",
            "--bpf-pin-dir",
            "none",
        ],
    )
    .expect("start");
    let status = gw
        .wait_exit(Duration::from_secs(20))
        .expect("gatewayd exits by itself");
    assert!(!status.success(), "exit status {status}");
    let stderr = gw.stderr();
    assert!(stderr.contains("eBPF is required"), "{stderr}");
    assert!(
        stderr.contains("Operation not permitted")
            || stderr.contains("permission denied")
            || stderr.contains("EPERM"),
        "the kernel's reason is missing: {stderr}"
    );
}

#[test]
fn ebpf_auto_without_privileges_warns_once_and_keeps_serving() {
    // Dropping capabilities needs to start as root.
    require_ebpf!("ebpf_auto_without_privileges_warns_once_and_keeps_serving");
    let (_dir, config) = config();
    let mut gw = Gatewayd::start_with(
        without_bpf_privileges(),
        &[
            "--config",
            &config,
            "--ebpf",
            "auto",
            "--bpf-pin-dir",
            "none",
        ],
    )
    .expect("start");
    gw.wait_healthy().expect("healthy without eBPF");
    assert_eq!(gw.get("/healthz").expect("healthz").status, 200);
    assert_eq!(gw.get("/readyz").expect("readyz").status, 200);
    let flows = gw.get("/flows").expect("flows");
    assert_eq!(flows.status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&flows.body).ok(),
        Some(serde_json::json!([]))
    );
    let metrics = gw.get("/metrics").expect("metrics").body;
    assert_eq!(
        metric(&metrics, "gatewayd_ebpf_loaded"),
        Some(0.0),
        "{metrics}"
    );
    let stderr = gw.stderr();
    assert_eq!(
        stderr.matches("eBPF unavailable").count(),
        1,
        "one clear warning: {stderr}"
    );
    assert!(gw.stop(Signal::SIGTERM).expect("stop").success());
}

#[test]
fn ebpf_off_never_loads_and_serves_an_empty_flow_table() {
    let (_dir, config) = config();
    let mut gw = Gatewayd::start(&["--config", &config, "--ebpf", "off"]).expect("start");
    gw.wait_healthy().expect("healthy");
    assert_eq!(gw.get("/flows").expect("flows").body.trim(), "[]");
    let metrics = gw.get("/metrics").expect("metrics").body;
    assert_eq!(metric(&metrics, "gatewayd_ebpf_loaded"), Some(0.0));
    assert!(
        metric(&metrics, "process_resident_memory_bytes").is_some_and(|v| v > 0.0),
        "{metrics}"
    );
    assert!(
        metric(&metrics, "gatewayd_config_reloads_total").is_some_and(|v| v >= 1.0),
        "{metrics}"
    );
    assert!(!gw.stderr().contains("eBPF unavailable"), "{}", gw.stderr());
    assert!(
        gw.stop(Signal::SIGINT).expect("stop").success(),
        "SIGINT exits 0"
    );
}

#[test]
fn ebpf_required_as_root_loads_and_reports_stats() {
    require_ebpf!("ebpf_required_as_root_loads_and_reports_stats");
    let (_dir, config) = config();
    // The flow table is pinned in a bpffs of the test's own, not the host's /sys/fs/bpf.
    let bpffs = Bpffs::mount();
    let pin_dir = bpffs.path.join("gatewayd");
    let pin_arg = pin_dir.to_string_lossy().into_owned();
    let mut gw = Gatewayd::start(&[
        "--config",
        &config,
        "--ebpf",
        "required",
        "--bpf-pin-dir",
        &pin_arg,
    ])
    .expect("start");
    gw.wait_healthy().expect("healthy");
    let metrics = gw.get("/metrics").expect("metrics").body;
    assert_eq!(
        metric(&metrics, "gatewayd_ebpf_loaded"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "gatewayd_ebpf_feature{feature=\"pinning\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(pin_dir.join("FLOWS").exists(), "pinned where asked");
    for name in [
        "gatewayd_xdp_packets_total",
        "gatewayd_xdp_bytes_total",
        "gatewayd_xdp_parse_failures_total",
        "gatewayd_xdp_non_ip_total",
    ] {
        assert!(
            metric(&metrics, name).is_some(),
            "{name} missing: {metrics}"
        );
    }
    assert!(
        gw.stop(Signal::SIGTERM).expect("stop").success(),
        "SIGTERM exits 0"
    );
}

#[test]
fn an_unknown_interface_is_refused_under_required_and_tolerated_under_auto() {
    require_ebpf!("an_unknown_interface_is_refused_under_required_and_tolerated_under_auto");
    let (_dir, config) = config();
    let mut required = Gatewayd::start(&[
        "--config",
        &config,
        "--ebpf",
        "required",
        "--xdp-iface",
        "gw-no-such0",
        "--bpf-pin-dir",
        "none",
    ])
    .expect("start");
    let status = required.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!status.success());
    assert!(
        required.stderr().contains("gw-no-such0"),
        "names the interface: {}",
        required.stderr()
    );

    let mut auto = Gatewayd::start(&[
        "--config",
        &config,
        "--ebpf",
        "auto",
        "--xdp-iface",
        "gw-no-such0",
        "--bpf-pin-dir",
        "none",
    ])
    .expect("start");
    auto.wait_healthy().expect("auto keeps serving");
    assert!(auto.stop(Signal::SIGTERM).expect("stop").success());
}

#[test]
fn an_invalid_tc_mode_is_refused_under_required_and_warned_under_auto() {
    let (_dir, config) = config();
    let with_bad_mode = || {
        let mut cmd = Command::new(gatewayd_bin());
        cmd.env("GATEWAYD_TC_MODE", "netlink");
        cmd
    };
    // Checked before anything is loaded: no privileges needed to see it refused.
    let mut required = Gatewayd::start_with(
        with_bad_mode(),
        &[
            "--config",
            &config,
            "--ebpf",
            "required",
            "--bpf-pin-dir",
            "none",
        ],
    )
    .expect("start");
    let status = required.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!status.success(), "exit status {status}");
    let stderr = required.stderr();
    assert!(
        stderr.contains("invalid GATEWAYD_TC_MODE \"netlink\": expected tcx or clsact"),
        "{stderr}"
    );

    let mut auto = Gatewayd::start_with(
        with_bad_mode(),
        &[
            "--config",
            &config,
            "--ebpf",
            "auto",
            "--bpf-pin-dir",
            "none",
        ],
    )
    .expect("start");
    auto.wait_healthy().expect("auto keeps serving");
    let stderr = auto.stderr();
    assert!(
        stderr.contains("GATEWAYD_TC_MODE is tcx or clsact; using tcx"),
        "{stderr}"
    );
    assert!(auto.stop(Signal::SIGTERM).expect("stop").success());
}

#[test]
fn check_and_run_refuse_missing_config_files_naming_them() {
    let output = Command::new(gatewayd_bin())
        .args(["check", "--config", "/nonexistent/gw.yaml"])
        .output()
        .expect("run check");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/gw.yaml"));

    let mut gw =
        Gatewayd::start(&["--config", "/nonexistent/gw.yaml", "--ebpf", "off"]).expect("start");
    let status = gw.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(1));
    assert!(
        gw.stderr().contains("/nonexistent/gw.yaml"),
        "{}",
        gw.stderr()
    );
}
