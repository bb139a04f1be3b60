//! gatewayd attached to one end of a veth pair; traffic from the other namespace; `/flows`
//! must report it exactly as it crossed the wire. XDP runs in driver mode on a veth. On
//! SIGTERM and SIGINT every program is detached (XDP, TC egress, the namespace's
//! sk_lookup) and a clsact qdisc gatewayd created is removed, one it found stays.

#[macro_use]
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::unix::fs::MetadataExt as _,
    process::Command,
    time::{Duration, Instant},
};

use gateway_tests::{netns::NetnsPair, run_ok, EMPTY_CONFIG};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use support::NsGatewayd;

/// gatewayd's arguments here: `--ebpf required`, no pinning (the pin directory is the
/// host's, not the namespace's), `--xdp-iface` for every interface of `ifaces`.
fn args<'a>(ifaces: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--ebpf", "required", "--bpf-pin-dir", "none"];
    args.extend(ifaces.iter().flat_map(|iface| ["--xdp-iface", iface]));
    args
}

fn find_flow(
    flows: &[serde_json::Value],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dst_port: u16,
) -> Option<&serde_json::Value> {
    flows.iter().find(|f| {
        f["protocol"] == "tcp"
            && f["src_addr"] == src.to_string()
            && f["dst_addr"] == dst.to_string()
            && f["dst_port"] == dst_port
    })
}

/// A TCP segment (ACK|PSH) with `payload_len` bytes, as an IPv4 packet; the kernel fills
/// the IPv4 checksum (and the total length) on a raw IPPROTO_RAW socket.
fn tcp_segment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    seq: u32,
    payload_len: usize,
) -> Vec<u8> {
    let total = (20 + 20 + payload_len) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    p.extend(std::iter::repeat_n(0x5a, payload_len));
    p
}

#[test]
fn flows_report_exact_packets_and_l3_bytes_of_segments_sent_from_the_peer_namespace() {
    require_ebpf!(
        "flows_report_exact_packets_and_l3_bytes_of_segments_sent_from_the_peer_namespace"
    );
    let pair = NetnsPair::new("flow").expect("create namespaces");
    let dir = tempfile::tempdir().expect("temp dir");
    let gw = NsGatewayd::start(&pair.a, dir.path(), EMPTY_CONFIG, &args(&[&pair.veth_a]));

    // Resolve the neighbour first (a connection attempt to a closed port: SYN, RST) so
    // that the crafted segments leave at once.
    let addr_a = pair.addr_a;
    NetnsPair::run_in(&pair.b, move || {
        let _ = TcpStream::connect_timeout(&SocketAddr::from((addr_a, 9)), Duration::from_secs(2));
        Ok(())
    })
    .expect("neighbour resolution");

    let (src, dst) = (pair.addr_b, pair.addr_a);
    let payloads = [0usize, 1, 100, 512, 1000, 1400, 7, 64, 300, 999];
    let segments: Vec<Vec<u8>> = payloads
        .iter()
        .enumerate()
        .map(|(i, &len)| tcp_segment(src, dst, 41000, 7777, 1000 + i as u32 * 2000, len))
        .collect();
    let expected_bytes: u64 = segments.iter().map(|s| s.len() as u64).sum();
    NetnsPair::run_in(&pair.b, move || {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255)))?;
        let to = SockAddr::from(SocketAddr::new(IpAddr::V4(dst), 0));
        for segment in &segments {
            socket.send_to(segment, &to)?;
        }
        Ok(())
    })
    .expect("send crafted segments from the peer namespace");

    // Poll until every segment is counted, then check the counts exactly.
    let deadline = Instant::now() + Duration::from_secs(5);
    let flows = loop {
        let flows = gw.flows("");
        let counted = find_flow(&flows, src, dst, 7777)
            .and_then(|f| f["packets"].as_u64())
            .unwrap_or(0);
        if counted >= payloads.len() as u64 || Instant::now() > deadline {
            break flows;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let flow = find_flow(&flows, src, dst, 7777)
        .unwrap_or_else(|| panic!("no flow {src}:41000 -> {dst}:7777 in {flows:#?}"));
    assert_eq!(flow["src_port"], 41000);
    assert_eq!(flow["packets"], payloads.len() as u64, "{flow}");
    assert_eq!(flow["bytes"], expected_bytes, "{flow}");
    assert_eq!(flow["tcp_flags"], serde_json::json!(["PSH", "ACK"]));
}

#[test]
fn a_real_tcp_exchange_shows_as_a_flow_with_its_handshake_and_close() {
    require_ebpf!("a_real_tcp_exchange_shows_as_a_flow_with_its_handshake_and_close");
    let pair = NetnsPair::new("tcp").expect("create namespaces");
    let dir = tempfile::tempdir().expect("temp dir");
    let gw = NsGatewayd::start(&pair.a, dir.path(), EMPTY_CONFIG, &args(&[&pair.veth_a]));
    let (addr_a, addr_b) = (pair.addr_a, pair.addr_b);

    // Server in A: read everything, answer with the byte count.
    let listener = NetnsPair::run_in(&pair.a, move || {
        Ok(TcpListener::bind(SocketAddrV4::new(addr_a, 0))?)
    })
    .expect("listen in A");
    let port = listener.local_addr().expect("local addr").port();
    let server = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut stream, _) = listener.accept()?;
        let mut received = Vec::new();
        stream.read_to_end(&mut received)?;
        stream.write_all(format!("{}", received.len()).as_bytes())?;
        Ok(received.len())
    });
    let sent = 50_000usize;
    let reply = NetnsPair::run_in(&pair.b, move || {
        let mut stream =
            TcpStream::connect_timeout(&SocketAddr::from((addr_a, port)), Duration::from_secs(5))?;
        stream.write_all(&vec![1u8; sent])?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply)
    })
    .expect("client in B");
    assert_eq!(reply, sent.to_string());
    assert_eq!(server.join().expect("server thread").expect("server"), sent);

    // Poll until the close (FIN) is counted.
    let deadline = Instant::now() + Duration::from_secs(5);
    let flows = loop {
        let flows = gw.flows("");
        let closed = find_flow(&flows, addr_b, addr_a, port)
            .and_then(|f| f["tcp_flags"].as_array())
            .is_some_and(|flags| flags.iter().any(|f| f == "FIN"));
        if closed || Instant::now() > deadline {
            break flows;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let flow = find_flow(&flows, addr_b, addr_a, port)
        .unwrap_or_else(|| panic!("no flow to port {port} in {flows:#?}"));
    let flags: Vec<&str> = flow["tcp_flags"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f.as_str()).collect())
        .unwrap_or_default();
    for flag in ["SYN", "ACK", "FIN"] {
        assert!(flags.contains(&flag), "{flag} missing from {flags:?}");
    }
    let packets = flow["packets"].as_u64().unwrap_or(0);
    let bytes = flow["bytes"].as_u64().unwrap_or(0);
    // Every segment carries at least a 20-byte IP and a 20-byte TCP header on top of the data.
    assert!(packets >= 3, "{flow}");
    assert!(bytes >= sent as u64 + 40 * packets, "{flow}");

    // The metrics see the same traffic.
    let metrics = gw.get("/metrics").expect("GET /metrics").body;
    let packets_total: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gatewayd_xdp_packets_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(packets_total >= packets, "{metrics}");
    // veth has native XDP: driver mode, as the kernel shows it too (`xdp`, not
    // `xdpgeneric`).
    assert!(
        metrics.contains(&format!(
            "gatewayd_xdp_attached{{iface=\"{}\",mode=\"driver\"}} 1",
            pair.veth_a
        )),
        "{metrics}"
    );
    let link = link_show(&pair.a, &pair.veth_a);
    assert!(
        link.contains(" xdp ") && !link.contains("xdpgeneric"),
        "{link}"
    );
}

fn link_show(ns: &str, dev: &str) -> String {
    String::from_utf8_lossy(
        &run_ok(Command::new("ip").args(["-n", ns, "link", "show", "dev", dev]))
            .expect("ip link")
            .stdout,
    )
    .into_owned()
}

/// `tc` with `args` in namespace `ns`: its output.
fn tc(ns: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(
        &run_ok(Command::new("tc").args(["-n", ns]).args(args))
            .expect("tc")
            .stdout,
    )
    .into_owned()
}

/// A BPF link a process holds, as `/proc/<pid>/fdinfo` shows it: `link_type` (`xdp`,
/// `tcx`, `netns`, ...), `link_id`, and the rest (`ifindex`, `netns_ino`, ...).
#[derive(Debug)]
struct Link {
    kind: String,
    id: u32,
    fields: BTreeMap<String, String>,
}

fn links_of(pid: u32) -> Vec<Link> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("list the fds");
    let mut links = Vec::new();
    for fd in fds.filter_map(Result::ok) {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        if target.to_string_lossy() != "anon_inode:bpf_link" {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let fields: BTreeMap<String, String> = info
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let (Some(kind), Some(id)) = (
            fields.get("link_type").cloned(),
            fields.get("link_id").and_then(|id| id.parse().ok()),
        ) else {
            continue;
        };
        links.push(Link { kind, id, fields });
    }
    links.sort_by_key(|l| l.id);
    links
}

/// Ids of every BPF link the kernel holds.
fn live_link_ids() -> BTreeSet<u32> {
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .map(|link| link.id())
        .collect()
}

fn ifindex(ns: &str, dev: &str) -> String {
    link_show(ns, dev)
        .split(':')
        .next()
        .map(|i| i.trim().to_owned())
        .unwrap_or_default()
}

/// Starts gatewayd on `pair`'s veth with `env`, checks what the kernel holds of it, stops
/// it with `signal`; returns the TC mode it used. Every link it held is gone afterwards,
/// and so are its XDP program and its egress filter.
fn detaches_on(pair: &NetnsPair, signal: nix::sys::signal::Signal, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut gw = NsGatewayd::start_with_env(
        &pair.a,
        dir.path(),
        EMPTY_CONFIG,
        &args(&[&pair.veth_a]),
        env,
    );
    let metrics = gw.get("/metrics").expect("GET /metrics").body;
    let tc_mode = ["tcx", "clsact"]
        .into_iter()
        .find(|mode| {
            metrics.contains(&format!(
                "gatewayd_tc_attached{{iface=\"{}\",mode=\"{mode}\"}} 1",
                pair.veth_a
            ))
        })
        .unwrap_or_else(|| panic!("tc_reply attached: {metrics}"))
        .to_owned();

    // What the kernel holds while it runs.
    assert!(link_show(&pair.a, &pair.veth_a).contains(" xdp "));
    let pid = gw.child.id();
    let links = links_of(pid);
    let index = ifindex(&pair.a, &pair.veth_a);
    let kinds: BTreeSet<&str> = links.iter().map(|l| l.kind.as_str()).collect();
    let mut expected = BTreeSet::from(["xdp", "netns"]);
    if tc_mode == "tcx" {
        expected.insert("tcx");
    }
    assert_eq!(kinds, expected, "{links:#?}");
    for link in &links {
        match link.kind.as_str() {
            "xdp" | "tcx" => assert_eq!(link.fields.get("ifindex"), Some(&index), "{link:?}"),
            _ => {
                let ino = std::fs::metadata(format!("/var/run/netns/{}", pair.a))
                    .expect("netns file")
                    .ino();
                assert_eq!(
                    link.fields.get("netns_ino"),
                    Some(&ino.to_string()),
                    "sk_lookup on gatewayd's namespace: {link:?}"
                );
            }
        }
    }
    let filters = tc(&pair.a, &["filter", "show", "dev", &pair.veth_a, "egress"]);
    assert_eq!(
        filters.contains("tc_reply"),
        tc_mode == "clsact",
        "a clsact filter only in clsact mode: {filters}"
    );

    let nix_pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
    nix::sys::signal::kill(nix_pid, signal).expect("signal");
    let mut status = None;
    for _ in 0..200 {
        if let Ok(Some(s)) = gw.child.try_wait() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.unwrap_or_else(|| panic!("gatewayd exits after {signal}"));
    assert!(status.success(), "exit status {status}: {}", gw.stderr());

    let link = link_show(&pair.a, &pair.veth_a);
    assert!(
        !link.contains("xdp"),
        "XDP still attached after exit: {link}"
    );
    let filters = tc(&pair.a, &["filter", "show", "dev", &pair.veth_a, "egress"]);
    assert!(
        !filters.contains("tc_reply"),
        "egress filter after exit: {filters}"
    );
    // Links are freed when their last descriptor closes; give the kernel a moment.
    let ids: BTreeSet<u32> = links.iter().map(|l| l.id).collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left: Vec<u32> = live_link_ids().intersection(&ids).copied().collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "links {left:?} outlive gatewayd: {links:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    tc_mode
}

#[test]
fn sigterm_detaches_xdp_tc_and_sk_lookup_and_exits_zero() {
    require_ebpf!("sigterm_detaches_xdp_tc_and_sk_lookup_and_exits_zero");
    let pair = NetnsPair::new("term").expect("create namespaces");
    detaches_on(&pair, nix::sys::signal::Signal::SIGTERM, &[]);
    let qdiscs = tc(&pair.a, &["qdisc", "show", "dev", &pair.veth_a]);
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
}

#[test]
fn sigint_detaches_everything_and_removes_the_clsact_qdisc_gatewayd_created() {
    require_ebpf!("sigint_detaches_everything_and_removes_the_clsact_qdisc_gatewayd_created");
    let pair = NetnsPair::new("int").expect("create namespaces");
    let qdiscs = tc(&pair.a, &["qdisc", "show", "dev", &pair.veth_a]);
    assert!(!qdiscs.contains("clsact"), "none before: {qdiscs}");
    let mode = detaches_on(
        &pair,
        nix::sys::signal::Signal::SIGINT,
        &[("GATEWAYD_TC_MODE", "clsact")],
    );
    assert_eq!(mode, "clsact");
    let qdiscs = tc(&pair.a, &["qdisc", "show", "dev", &pair.veth_a]);
    assert!(
        !qdiscs.contains("clsact"),
        "the qdisc gatewayd created is gone: {qdiscs}"
    );
}

#[test]
fn a_clsact_qdisc_that_was_there_before_gatewayd_stays_after_it_exits() {
    require_ebpf!("a_clsact_qdisc_that_was_there_before_gatewayd_stays_after_it_exits");
    let pair = NetnsPair::new("keepq").expect("create namespaces");
    tc(&pair.a, &["qdisc", "add", "dev", &pair.veth_a, "clsact"]);
    let mode = detaches_on(
        &pair,
        nix::sys::signal::Signal::SIGTERM,
        &[("GATEWAYD_TC_MODE", "clsact")],
    );
    assert_eq!(mode, "clsact");
    let qdiscs = tc(&pair.a, &["qdisc", "show", "dev", &pair.veth_a]);
    assert!(
        qdiscs.contains("clsact"),
        "someone else's qdisc stays: {qdiscs}"
    );
}

#[test]
fn a_start_failing_after_the_clsact_qdisc_was_created_detaches_and_removes_it() {
    require_ebpf!("a_start_failing_after_the_clsact_qdisc_was_created_detaches_and_removes_it");
    let pair = NetnsPair::new("halfq").expect("create namespaces");
    let qdiscs = tc(&pair.a, &["qdisc", "show", "dev", &pair.veth_a]);
    assert!(!qdiscs.contains("clsact"), "none before: {qdiscs}");
    // The veth is attached (XDP, then tc_reply on a clsact qdisc gatewayd creates) before
    // the second interface fails: under --ebpf required that ends the start.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut gw = NsGatewayd::spawn(
        &pair.a,
        dir.path(),
        EMPTY_CONFIG,
        &args(&[&pair.veth_a, "gw-no-such0"]),
        &[("GATEWAYD_TC_MODE", "clsact")],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = gw.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "gatewayd did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = gw.stderr();
    assert!(!status.success(), "exit status {status}: {stderr}");
    assert!(
        stderr.contains("gw-no-such0"),
        "names the interface: {stderr}"
    );
    let link = link_show(&pair.a, &pair.veth_a);
    assert!(!link.contains("xdp"), "XDP left attached: {link}");
    let filters = tc(&pair.a, &["filter", "show", "dev", &pair.veth_a, "egress"]);
    assert!(
        !filters.contains("tc_reply"),
        "egress filter left: {filters}"
    );
    let qdiscs = tc(&pair.a, &["qdisc", "show", "dev", &pair.veth_a]);
    assert!(
        !qdiscs.contains("clsact"),
        "the qdisc gatewayd created is gone: {qdiscs}"
    );
}
