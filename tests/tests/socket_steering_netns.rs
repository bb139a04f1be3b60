//! The socket programs of a real gatewayd in a network namespace, clients in the
//! peer namespace over a veth pair:
//!
//! - `sk_lookup_steer`: a Gateway address range (`gateway.networking.example/CIDR`) that no
//!   interface has, routed to the host with `ip route add local 192.0.2.0/24 dev lo`, is
//!   served through one socket on the range's first address; the steering follows
//!   reloads; a single address inside the range belongs to its own Gateway (longest
//!   prefix).
//! - XDP knows the range whole: a packet to any of its addresses counts under the range's
//!   listener, and `--xdp-drop-unlisted` drops the range's unlisted ports.
//! - a Gateway `IPAddress` that no interface has (a plain bind fails with EADDRNOTAVAIL)
//!   is served through `sk_lookup` like a one-address range; without eBPF the listener is
//!   not ready and the reason names the address and the listener.
//! - `sk_reuseport_pick`: new connections spread over the workers by flow hash; a worker
//!   drained through the admin API gets none until it is taken back.
//! - graceful fallback: a namespace that refuses another sk_lookup program turns steering
//!   off with one warning, and more workers than `sk_reuseport_pick` can choose from turn
//!   that off with one warning; everything else runs.

#[macro_use]
mod support;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use gateway_tests::{echo::Echo, http_get, netns::NetnsPair, scenario::service, HttpResponse};
use support::*;

const PORT: u16 = 8080;
const CIDR: &str = "gateway.networking.example/CIDR";

fn pair(tag: &str) -> NetnsPair {
    let pair = NetnsPair::new(tag).expect("create namespaces");
    static_neighbours(&pair);
    pair
}

/// `192.0.2.0/24` is local to namespace A (no interface has it) and routed there from B.
fn route_range(pair: &NetnsPair) {
    ip(&[
        "-n",
        &pair.a,
        "route",
        "add",
        "local",
        "192.0.2.0/24",
        "dev",
        "lo",
    ]);
    let via = pair.addr_a.to_string();
    ip(&["-n", &pair.b, "route", "add", "192.0.2.0/24", "via", &via]);
}

/// `addr` is on no interface of namespace A, yet A delivers it locally and B routes it
/// there: a plain bind on it fails with EADDRNOTAVAIL. For IPv4 the local route sits in a
/// routing table of its own, chosen by a rule (routing finds it; `bind` looks in the
/// `local` table only; `ip route add local ADDR dev lo` alone would make the address
/// bindable). For IPv6 a local route is enough: `bind` accepts only interface addresses.
fn route_nonlocal(pair: &NetnsPair, addr: IpAddr, via: IpAddr) {
    let host = match addr {
        IpAddr::V4(_) => format!("{addr}/32"),
        IpAddr::V6(_) => format!("{addr}/128"),
    };
    let family = if addr.is_ipv4() { "-4" } else { "-6" };
    if addr.is_ipv4() {
        ip(&[
            "-n", &pair.a, "route", "add", "local", &host, "dev", "lo", "table", "100",
        ]);
        ip(&["-n", &pair.a, "rule", "add", "to", &host, "lookup", "100"]);
    } else {
        ip(&[
            "-n", &pair.a, "-6", "route", "add", "local", &host, "dev", "lo",
        ]);
    }
    let via = via.to_string();
    ip(&["-n", &pair.b, family, "route", "add", &host, "via", &via]);
}

/// An echo backend listening on 127.0.0.1 inside namespace `ns`.
fn echo_in(ns: &str, name: &str) -> Echo {
    let name = name.to_owned();
    NetnsPair::run_in(ns, move || Ok(Echo::start(&name))).expect("echo backend in namespace")
}

fn gateway(name: &str, created: &str, addresses: &str) -> String {
    gateway_on(name, created, addresses, PORT)
}

fn gateway_on(name: &str, created: &str, addresses: &str, port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: default, creationTimestamp: \"{created}\"}}\nspec:\n  gatewayClassName: x\n  addresses: {addresses}\n  listeners:\n  - {{name: http, protocol: HTTP, port: {port}}}\n"
    )
}

/// Runs gatewayd in namespace `ns` until it exits by itself (up to 20 s): its exit status
/// and stderr.
fn run_to_exit(
    ns: &str,
    dir: &Path,
    config: &str,
    args: &[&str],
) -> (std::process::ExitStatus, String) {
    let config_path = dir.join("exits.yaml");
    std::fs::write(&config_path, config).expect("write config");
    let stderr_path = dir.join("exits.log");
    let mut child = NetnsPair::command_in(
        ns,
        gateway_tests::gatewayd_bin().to_str().expect("utf-8 path"),
    )
    .arg("run")
    .arg("--config")
    .arg(&config_path)
    .args(["--admin", "127.0.0.1:9902"])
    .args(args)
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
    .spawn()
    .expect("start gatewayd");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "gatewayd did not exit: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status,
        std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    )
}

fn route(gateway: &str, backend: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: to-{backend}, namespace: default}}\nspec:\n  parentRefs: [{{name: {gateway}}}]\n  rules:\n  - backendRefs: [{{name: {backend}, port: 8080}}]\n"
    )
}

/// `GET /` on `addr` from namespace `ns`.
fn get_from(ns: &str, addr: SocketAddr) -> anyhow::Result<HttpResponse> {
    NetnsPair::run_in(ns, move || http_get(addr, "/"))
}

/// Which echo backend answered.
fn backend(response: &HttpResponse) -> String {
    serde_json::from_str::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|v| v["pod"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("(status {}: {})", response.status, response.body))
}

fn range_addr(last: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(192, 0, 2, last), PORT))
}

/// A TCP connection attempt from `ns`: `true` when it was accepted.
fn connects_from(ns: &str, addr: SocketAddr) -> bool {
    NetnsPair::run_in(ns, move || {
        Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
    })
    .expect("connect thread")
}

/// `curl -X POST` on the admin API inside the namespace.
fn post(gw: &NsGatewayd, path: &str) -> HttpResponse {
    let url = format!("http://127.0.0.1:{ADMIN_PORT}{path}");
    let out = NetnsPair::command_in(&gw.ns, "curl")
        .args(["-s", "-i", "--max-time", "5", "-X", "POST", &url])
        .output()
        .expect("curl");
    gateway_tests::parse_response(&String::from_utf8_lossy(&out.stdout)).expect("HTTP response")
}

fn wait_ready(gw: &NsGatewayd) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if gw.get("/readyz").is_some_and(|r| r.status == 200) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("gatewayd not ready: {}", gw.stderr());
}

/// gatewayd in namespace A with `config`, sk_lookup required (two workers, no pinning),
/// ready and steering exactly `prefixes` prefixes.
fn start_steering(pair: &NetnsPair, dir: &Path, config: &str, prefixes: f64) -> NsGatewayd {
    let gw = NsGatewayd::start(
        &pair.a,
        dir,
        config,
        &[
            "--ebpf",
            "required",
            "--bpf-pin-dir",
            "none",
            "--workers",
            "2",
        ],
    );
    wait_ready(&gw);
    let m = gw.wait_metrics(Duration::from_secs(5), |m| {
        m.get("gatewayd_sk_lookup_prefixes") >= prefixes
    });
    assert_eq!(m.feature("sk_lookup"), Some(1.0), "{}", gw.stderr());
    assert_eq!(
        m.get("gatewayd_sk_lookup_prefixes"),
        prefixes,
        "{}",
        gw.stderr()
    );
    gw
}

fn write_config(dir: &Path, yaml: &str) {
    let path = dir.join("config.yaml");
    let tmp = dir.join("config.yaml.tmp");
    std::fs::write(&tmp, yaml).expect("write config");
    std::fs::rename(&tmp, &path).expect("replace config");
}

#[test]
fn an_address_range_no_interface_has_is_served_through_sk_lookup_and_follows_reloads() {
    require_ebpf!(
        "an_address_range_no_interface_has_is_served_through_sk_lookup_and_follows_reloads"
    );
    let pair = pair("skl");
    route_range(&pair);
    let range_backend = echo_in(&pair.a, "range-backend");
    let single_backend = echo_in(&pair.a, "single-backend");
    let services = format!(
        "{}{}",
        service("default", "range-backend", &[range_backend.addr], None),
        service("default", "single-backend", &[single_backend.addr], None)
    );
    let config = |range: &str| {
        [
            services.clone(),
            gateway(
                "range",
                "2020-01-01T00:00:00Z",
                &format!("[{{type: {CIDR}, value: \"{range}\"}}, {{type: IPAddress, value: 192.0.2.200}}]"),
            ),
            route("range", "range-backend"),
            gateway(
                "single",
                "2021-01-01T00:00:00Z",
                "[{type: IPAddress, value: 192.0.2.9}]",
            ),
            route("single", "single-backend"),
        ]
        .join("\n---\n")
    };
    let dir = tempfile::tempdir().expect("temp dir");
    // The range, and the two single addresses inside it (each its own /32, so that the
    // longest prefix wins over the range).
    let gw = start_steering(&pair, dir.path(), &config("192.0.2.0/24"), 3.0);

    // Nothing is bound on these addresses: only the range's first address has a socket.
    for last in [1, 17, 100, 254, 0] {
        let response = get_from(&pair.b, range_addr(last))
            .unwrap_or_else(|e| panic!("192.0.2.{last}: {e:#}\n{}", gw.stderr()));
        assert_eq!(response.status, 200, "192.0.2.{last}: {}", response.body);
        assert_eq!(backend(&response), "range-backend", "192.0.2.{last}");
    }
    // A single address of the same Gateway, bound on its own (the local route makes it
    // bindable), and one of another Gateway inside the range: the longest prefix wins.
    let response = get_from(&pair.b, range_addr(200)).expect("192.0.2.200");
    assert_eq!(backend(&response), "range-backend");
    let response = get_from(&pair.b, range_addr(9)).expect("192.0.2.9");
    assert_eq!(backend(&response), "single-backend");
    // Steering is per port: the range's addresses on another port are nobody's.
    assert!(!connects_from(
        &pair.b,
        SocketAddr::from((Ipv4Addr::new(192, 0, 2, 17), PORT + 1))
    ));
    let m = gw.metrics();
    assert!(
        m.get("gatewayd_sk_lookup_steered_total") >= 7.0,
        "every request above went through sk_lookup: {:?}",
        m.0
    );
    assert_eq!(m.get("gatewayd_sk_lookup_missed_total"), 0.0);
    // Then sk_reuseport chose a worker for each of them.
    assert!(m.get("gatewayd_sk_reuseport_total{result=\"picked\"}") >= 7.0);
    let status = gw.get("/status").expect("status").body;
    assert!(
        status.contains("192.0.2.0/24") && status.contains(CIDR),
        "{status}"
    );

    // Reload with half the range: the other half is not served any more, the first half
    // still is, without a restart.
    write_config(&gw.dir, &config("192.0.2.0/25"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while connects_from(&pair.b, range_addr(254)) {
        assert!(
            Instant::now() < deadline,
            "192.0.2.254 still served after the reload: {}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let response = get_from(&pair.b, range_addr(100)).expect("192.0.2.100 after the reload");
    assert_eq!(backend(&response), "range-backend");
    let response = get_from(&pair.b, range_addr(9)).expect("192.0.2.9 after the reload");
    assert_eq!(backend(&response), "single-backend");

    // The range moves to another block: the old one is gone, the new one served.
    write_config(&gw.dir, &config("192.0.2.128/25"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let moved = get_from(&pair.b, range_addr(254))
            .is_ok_and(|r| backend(&r) == "range-backend")
            && !connects_from(&pair.b, range_addr(100));
        if moved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the range did not move: {}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !gw.stderr().contains("ERROR"),
        "no sync error: {}",
        gw.stderr()
    );
}

/// Accepted connections per worker.
fn accepted(m: &Metrics, workers: usize) -> Vec<u64> {
    (0..workers)
        .map(|w| {
            m.get(&format!(
                "gatewayd_worker_connections_accepted_total{{worker=\"{w}\"}}"
            )) as u64
        })
        .collect()
}

/// `n` HTTP requests, each on a new connection, from namespace `ns` to `addr`.
fn requests_from(ns: &str, addr: SocketAddr, n: usize) {
    NetnsPair::run_in(ns, move || {
        for _ in 0..n {
            let response = http_get(addr, "/")?;
            anyhow::ensure!(response.status == 404, "{response:?}");
        }
        Ok(())
    })
    .expect("requests from the peer namespace");
}

/// Waits until the workers together accepted `total`; the per-worker counts.
fn accepted_after(gw: &NsGatewayd, workers: usize, total: u64) -> Vec<u64> {
    let m = gw.wait_metrics(Duration::from_secs(5), |m| {
        accepted(m, workers).iter().sum::<u64>() >= total
    });
    let counts = accepted(&m, workers);
    assert_eq!(counts.iter().sum::<u64>(), total, "{counts:?}");
    counts
}

fn delta(after: &[u64], before: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

#[test]
fn new_connections_spread_over_the_workers_and_a_draining_worker_gets_none() {
    require_ebpf!("new_connections_spread_over_the_workers_and_a_draining_worker_gets_none");
    const WORKERS: usize = 4;
    // 120 connections over 4 workers: 30 expected each; fewer than 10 has a probability
    // below 1e-5 for a uniform hash.
    const BATCH: usize = 120;
    const AT_LEAST: u64 = 10;
    let pair = pair("rsp");
    let dir = tempfile::tempdir().expect("temp dir");
    let gw = NsGatewayd::start(
        &pair.a,
        dir.path(),
        &gateway_yaml(&[PORT]),
        &[
            "--ebpf",
            "required",
            "--bpf-pin-dir",
            "none",
            "--workers",
            "4",
        ],
    );
    wait_ready(&gw);
    let m = gw.wait_metrics(Duration::from_secs(5), |m| {
        m.get("gatewayd_sk_reuseport_groups") >= 2.0
    });
    assert_eq!(m.feature("sk_reuseport"), Some(1.0), "{}", gw.stderr());
    let addr = SocketAddr::V4(SocketAddrV4::new(pair.addr_a, PORT));

    requests_from(&pair.b, addr, BATCH);
    let first = accepted_after(&gw, WORKERS, BATCH as u64);
    assert!(
        first.iter().all(|n| *n >= AT_LEAST),
        "every worker gets new connections: {first:?}"
    );

    let drained = post(&gw, "/workers/2/drain");
    assert_eq!(drained.status, 200, "{}", drained.body);
    let report: serde_json::Value = serde_json::from_str(&drained.body).expect("JSON");
    assert_eq!(report["draining"], true);
    requests_from(&pair.b, addr, BATCH);
    let second = accepted_after(&gw, WORKERS, 2 * BATCH as u64);
    let got = delta(&second, &first);
    assert_eq!(
        got[2], 0,
        "the draining worker got new connections: {got:?}"
    );
    assert!(
        [0, 1, 3].iter().all(|w| got[*w] >= AT_LEAST),
        "the others share them: {got:?}"
    );
    let m = gw.metrics();
    assert_eq!(m.get("gatewayd_worker_draining{worker=\"2\"}"), 1.0);
    assert!(m.get("gatewayd_sk_reuseport_total{result=\"picked\"}") >= 2.0 * BATCH as f64);
    let workers: serde_json::Value =
        serde_json::from_str(&gw.get("/workers").expect("GET /workers").body).expect("JSON");
    assert_eq!(workers[2]["draining"], true, "{workers}");

    let undrained = post(&gw, "/workers/2/undrain");
    assert_eq!(undrained.status, 200, "{}", undrained.body);
    requests_from(&pair.b, addr, BATCH);
    let third = accepted_after(&gw, WORKERS, 3 * BATCH as u64);
    let got = delta(&third, &second);
    assert!(
        got.iter().all(|n| *n >= AT_LEAST),
        "taken back, worker 2 gets its share again: {got:?}"
    );

    // The last worker taking connections cannot drain; unknown workers are 404.
    for w in [0, 1, 3] {
        assert_eq!(post(&gw, &format!("/workers/{w}/drain")).status, 200);
    }
    let last = post(&gw, "/workers/2/drain");
    assert_eq!(last.status, 409, "{}", last.body);
    assert!(last.body.contains("last"), "{}", last.body);
    assert_eq!(post(&gw, "/workers/9/drain").status, 404);
    assert_eq!(post(&gw, "/workers/x/drain").status, 404);
    requests_from(&pair.b, addr, 20);
    let fourth = accepted_after(&gw, WORKERS, 3 * BATCH as u64 + 20);
    assert_eq!(
        delta(&fourth, &third),
        vec![0, 0, 20, 0],
        "only the one worker not draining"
    );
}

/// Holds `count` extra `sk_lookup` links in namespace `ns` (the kernel allows 64 programs
/// per namespace) until dropped.
struct SkLookupSlots {
    _ebpf: aya::Ebpf,
}

fn fill_sk_lookup_slots(ns: &str, count: usize) -> SkLookupSlots {
    use aya::programs::SkLookup;
    use gateway_common::{
        MAP_ACL_V4, MAP_ACL_V6, MAP_FLOWS, MAP_GATEWAY_ADDRS, MAP_LISTENERS, MAP_SOCKETS,
        MAP_STEER_V4, MAP_STEER_V6, MAP_SYN_BUCKETS, PROG_SK_LOOKUP_STEER,
    };
    // Small maps: only the program is needed.
    let mut loader = aya::EbpfLoader::new();
    for map in [
        MAP_FLOWS,
        MAP_SYN_BUCKETS,
        MAP_LISTENERS,
        MAP_GATEWAY_ADDRS,
        MAP_ACL_V4,
        MAP_ACL_V6,
        MAP_STEER_V4,
        MAP_STEER_V6,
        MAP_SOCKETS,
    ] {
        loader.map_max_entries(map, 1);
    }
    let mut ebpf = loader
        .load(gateway_userspace::ebpf::object())
        .expect("load the object");
    let program: &mut SkLookup = ebpf
        .program_mut(PROG_SK_LOOKUP_STEER)
        .expect("sk_lookup_steer")
        .try_into()
        .expect("an sk_lookup program");
    program
        .load()
        .expect("the verifier accepts sk_lookup_steer");
    for _ in 0..count {
        let netns = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
        program.attach(netns).expect("attach sk_lookup");
    }
    SkLookupSlots { _ebpf: ebpf }
}

#[test]
fn a_namespace_that_refuses_sk_lookup_turns_steering_off_with_one_warning_and_the_rest_runs() {
    require_ebpf!(
        "a_namespace_that_refuses_sk_lookup_turns_steering_off_with_one_warning_and_the_rest_runs"
    );
    let pair = pair("skf");
    route_range(&pair);
    let slots = fill_sk_lookup_slots(&pair.a, 64);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!(
        "{}\n---\n{}",
        gateway(
            "range",
            "2020-01-01T00:00:00Z",
            &format!(
                "[{{type: {CIDR}, value: 192.0.2.0/24}}, {{type: IPAddress, value: 192.0.2.200}}]"
            )
        ),
        gateway_on("any", "2020-01-01T00:00:00Z", "[]", 8081)
    );

    // --ebpf required: refused, naming the program and the kernel's reason.
    let (status, stderr) = run_to_exit(
        &pair.a,
        dir.path(),
        &config,
        &["--ebpf", "required", "--bpf-pin-dir", "none"],
    );
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("sk_lookup_steer") && stderr.contains("Argument list too long"),
        "names the program and the kernel's reason (E2BIG): {stderr}"
    );

    // --ebpf auto: one warning; XDP, sk_reuseport and serving go on.
    let gw = NsGatewayd::start(
        &pair.a,
        dir.path(),
        &config,
        &[
            "--ebpf",
            "auto",
            "--xdp-iface",
            &pair.veth_a,
            "--bpf-pin-dir",
            "none",
            "--workers",
            "2",
        ],
    );
    wait_ready(&gw);
    let stderr = gw.stderr();
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "one warning: {stderr}");
    assert!(warnings[0].contains("sk_lookup"), "{stderr}");
    let m = gw.metrics();
    assert_eq!(
        (
            m.feature("sk_lookup"),
            m.feature("sk_reuseport"),
            m.feature("xdp")
        ),
        (Some(0.0), Some(1.0), Some(1.0))
    );
    // Served: the listener on every address, the single address, and the range's first
    // address (its socket is bound there); not the rest of the range.
    for addr in [
        SocketAddr::from((pair.addr_a, 8081)),
        range_addr(200),
        range_addr(0),
    ] {
        let response = get_from(&pair.b, addr).unwrap_or_else(|e| panic!("{addr}: {e:#}"));
        assert_eq!(response.status, 404, "{addr}: no route, but served");
    }
    assert!(!connects_from(&pair.b, range_addr(77)));
    // Draining still works: it needs sk_reuseport only.
    assert_eq!(post(&gw, "/workers/1/drain").status, 200);
    assert_eq!(gw.flows("?port=8081").len(), 1, "XDP counts flows");
    drop(slots);
}

#[test]
fn without_ebpf_workers_cannot_drain_and_say_why() {
    // No privileges needed: --ebpf off.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = gateway_tests::write_config(dir.path(), "config.yaml", &gateway_yaml(&[]));
    let config = config.to_string_lossy().into_owned();
    let mut gw =
        gateway_tests::Gatewayd::start(&["--config", &config, "--ebpf", "off", "--workers", "2"])
            .expect("start");
    gw.wait_healthy().expect("healthy");
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-i",
            "--max-time",
            "5",
            "-X",
            "POST",
            &format!("http://{}/workers/1/drain", gw.admin),
        ])
        .output()
        .expect("curl");
    let response =
        gateway_tests::parse_response(&String::from_utf8_lossy(&out.stdout)).expect("response");
    assert_eq!(response.status, 409, "{}", response.body);
    assert!(response.body.contains("without eBPF"), "{}", response.body);
    let workers = gw.get("/workers").expect("GET /workers");
    let workers: serde_json::Value = serde_json::from_str(&workers.body).expect("JSON");
    assert_eq!(workers.as_array().map(Vec::len), Some(2), "{workers}");
    assert_eq!(workers[1]["draining"], false);
    let metrics: BTreeMap<String, f64> = Metrics::parse(&gw.get("/metrics").expect("m").body).0;
    assert_eq!(
        metrics.get("gatewayd_worker_draining{worker=\"1\"}"),
        Some(&0.0)
    );
}

#[test]
fn more_workers_than_sk_reuseport_can_choose_from_turn_it_off_with_one_warning_and_steering_goes_on(
) {
    require_ebpf!(
        "more_workers_than_sk_reuseport_can_choose_from_turn_it_off_with_one_warning_and_steering_goes_on"
    );
    let pair = pair("rpf");
    route_range(&pair);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = gateway(
        "range",
        "2020-01-01T00:00:00Z",
        &format!("[{{type: {CIDR}, value: 192.0.2.0/24}}]"),
    );
    // A limit of the maps (1,024 workers), not a refusal: not fatal even under required.
    let workers = (gateway_common::REUSEPORT_WORKERS_MAX + 1).to_string();
    let gw = NsGatewayd::start(
        &pair.a,
        dir.path(),
        &config,
        &[
            "--ebpf",
            "required",
            "--bpf-pin-dir",
            "none",
            "--workers",
            &workers,
        ],
    );
    wait_ready(&gw);
    let stderr = gw.stderr();
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "one warning: {stderr}");
    assert!(warnings[0].contains("sk_reuseport"), "{stderr}");
    let m = gw.wait_metrics(Duration::from_secs(5), |m| {
        m.get("gatewayd_sk_lookup_prefixes") >= 1.0
    });
    assert_eq!(
        (m.feature("sk_lookup"), m.feature("sk_reuseport")),
        (Some(1.0), Some(0.0))
    );
    // The range is served through sk_lookup; the kernel's hash picks the worker.
    for last in [5, 66] {
        let response = get_from(&pair.b, range_addr(last)).expect("served");
        assert_eq!(response.status, 404, "no route, but served");
    }
    assert!(gw.metrics().get("gatewayd_sk_lookup_steered_total") >= 2.0);
    let refused = post(&gw, "/workers/3/drain");
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(
        refused.body.contains("sk_reuseport_pick"),
        "{}",
        refused.body
    );
}

#[test]
fn an_address_no_interface_has_is_served_through_sk_lookup_and_without_ebpf_the_error_names_it() {
    require_ebpf!(
        "an_address_no_interface_has_is_served_through_sk_lookup_and_without_ebpf_the_error_names_it"
    );
    let v4: IpAddr = "198.51.100.7".parse().expect("address");
    let v6: IpAddr = "2001:db8:7::7".parse().expect("address");
    let pair = pair("nla");
    let (v6_a, _) = enable_ipv6(&pair);
    route_nonlocal(&pair, v4, pair.addr_a.into());
    route_nonlocal(&pair, v6, v6_a.into());
    // The setup holds: the host cannot bind either address.
    for addr in [v4, v6] {
        let refused = NetnsPair::run_in(&pair.a, move || {
            Ok(std::net::TcpListener::bind((addr, PORT)).map_err(|e| e.raw_os_error()))
        })
        .expect("bind in A");
        assert_eq!(
            refused.err(),
            Some(Some(nix::libc::EADDRNOTAVAIL)),
            "a plain bind on {addr} must fail"
        );
    }
    let echo = echo_in(&pair.a, "nonlocal-backend");
    let config = [
        service("default", "nonlocal-backend", &[echo.addr], None),
        gateway(
            "single",
            "2020-01-01T00:00:00Z",
            &format!(
                "[{{type: IPAddress, value: \"{v4}\"}}, {{type: IPAddress, value: \"{v6}\"}}]"
            ),
        ),
        route("single", "nonlocal-backend"),
    ]
    .join("\n---\n");
    let targets = [SocketAddr::new(v4, PORT), SocketAddr::new(v6, PORT)];
    let dir = tempfile::tempdir().expect("temp dir");

    // Without eBPF: not ready, and the reason names each address, the listener and what is
    // missing.
    let off = NsGatewayd::start(&pair.a, dir.path(), &config, &["--ebpf", "off"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let readyz = loop {
        let readyz = off.get("/readyz").expect("GET /readyz");
        if readyz.body.contains("cannot listen") || Instant::now() > deadline {
            break readyz;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    for needle in [
        "cannot listen on 198.51.100.7:8080 for listener http of Gateway default/single: the host has no address 198.51.100.7",
        "cannot listen on [2001:db8:7::7]:8080 for listener http of Gateway default/single: the host has no address 2001:db8:7::7",
        "sk_lookup",
    ] {
        assert!(readyz.body.contains(needle), "{needle:?} missing: {}", readyz.body);
    }
    let stderr = off.stderr();
    assert!(
        stderr.contains("198.51.100.7")
            && stderr.contains("listener http of Gateway default/single"),
        "the log names them too: {stderr}"
    );
    for addr in targets {
        assert!(!connects_from(&pair.b, addr), "nothing listens on {addr}");
    }
    drop(off);

    // With sk_lookup: bound with IP_FREEBIND, steered as a /32 and a /128, served.
    let gw = start_steering(&pair, dir.path(), &config, 2.0);
    for addr in targets {
        for _ in 0..3 {
            let response = get_from(&pair.b, addr)
                .unwrap_or_else(|e| panic!("{addr}: {e:#}\n{}", gw.stderr()));
            assert_eq!(response.status, 200, "{addr}: {}", response.body);
            assert_eq!(backend(&response), "nonlocal-backend", "{addr}");
        }
    }
    let m = gw.metrics();
    assert_eq!(m.get("gatewayd_sk_lookup_steered_total"), 6.0, "{:?}", m.0);
    assert_eq!(m.get("gatewayd_sk_lookup_missed_total"), 0.0);
    // Only those addresses on that port: another port of theirs is nobody's.
    for addr in targets {
        assert!(!connects_from(
            &pair.b,
            SocketAddr::new(addr.ip(), PORT + 1)
        ));
    }
    assert!(
        !gw.stderr().contains("ERROR") && !gw.stderr().contains("WARN"),
        "{}",
        gw.stderr()
    );
}

#[test]
fn xdp_counts_every_address_of_a_range_under_its_listener_and_drops_the_ranges_unlisted_ports() {
    require_ebpf!(
        "xdp_counts_every_address_of_a_range_under_its_listener_and_drops_the_ranges_unlisted_ports"
    );
    const RST: u8 = 0x04;
    let pair = pair("rxd");
    route_range(&pair);
    let config = gateway(
        "range",
        "2020-01-01T00:00:00Z",
        &format!("[{{type: {CIDR}, value: 192.0.2.0/24}}]"),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let gw = NsGatewayd::start(
        &pair.a,
        dir.path(),
        &config,
        &[
            "--ebpf",
            "required",
            "--bpf-pin-dir",
            "none",
            "--xdp-iface",
            &pair.veth_a,
            "--xdp-drop-unlisted",
            "--workers",
            "2",
        ],
    );
    wait_ready(&gw);
    let label = "192.0.2.0/24:8080";
    let m = gw.wait_metrics(Duration::from_secs(5), |m| {
        m.get("gatewayd_ebpf_listeners") == 1.0 && m.get("gatewayd_ebpf_gateway_addresses") == 1.0
    });
    assert_eq!(
        (
            m.get("gatewayd_ebpf_listeners"),
            m.get("gatewayd_ebpf_gateway_addresses")
        ),
        (1.0, 1.0),
        "one range listener, one gateway range: {:?}",
        m.0
    );

    // RST segments draw no answer, so the counters see exactly these.
    let (b, member) = (pair.addr_b, Ipv4Addr::new(192, 0, 2, 33));
    send_raw_v4(
        &pair.b,
        vec![
            raw_tcp(b, member, (41000, PORT), RST, &[]),
            raw_tcp(
                b,
                Ipv4Addr::new(192, 0, 2, 254),
                (41001, PORT),
                RST,
                &[0; 10],
            ),
            raw_tcp(b, member, (41002, 9999), RST, &[]),
            raw_tcp(b, Ipv4Addr::new(192, 0, 2, 1), (41003, 22), RST, &[]),
            raw_udp(b, member, (41004, PORT), b"udp"),
        ],
    );
    let m = gw.wait_metrics(Duration::from_secs(5), |m| m.drops("unlisted") >= 3);
    assert_eq!(
        m.listener("packets", label, "rx"),
        2,
        "two addresses of the range, one listener: {:?}",
        m.0
    );
    assert_eq!(m.listener("bytes", label, "rx"), 40 + 50);
    assert_eq!(
        m.drops("unlisted"),
        3,
        "other ports of the range's addresses, and UDP, are unlisted"
    );

    // A real connection to another address of the range: served, and its flow names the
    // range's listener.
    let response = get_from(&pair.b, range_addr(17)).expect("192.0.2.17");
    assert_eq!(response.status, 404, "served (no route)");
    let flows = gw.flows(&format!("?listener={label}"));
    assert_eq!(flows.len(), 3, "{flows:#?}");
    assert!(
        flows
            .iter()
            .any(|f| f["dst_addr"] == "192.0.2.17" && f["dst_port"] == PORT),
        "{flows:#?}"
    );
}
