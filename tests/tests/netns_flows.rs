//! gatewayd attached to one end of a veth pair; traffic from the other namespace; `/flows`
//! must report it exactly as it crossed the wire.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use gateway_tests::{
    ebpf_tests_can_run, netns::NetnsPair, parse_response, run_ok, write_config, EMPTY_CONFIG,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// gatewayd running inside namespace `ns`, reached through `ip netns exec ns curl`.
struct NsGatewayd {
    ns: String,
    child: std::process::Child,
    admin_port: u16,
    stderr: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl NsGatewayd {
    fn start(ns: &str, iface: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = write_config(dir.path(), "config.yaml", EMPTY_CONFIG);
        let stderr = dir.path().join("stderr.log");
        let admin_port = 9901;
        let child = NetnsPair::command_in(
            ns,
            gateway_tests::gatewayd_bin().to_str().expect("utf-8 path"),
        )
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args([
            "--admin",
            &format!("127.0.0.1:{admin_port}"),
            "--ebpf",
            "required",
            "--xdp-iface",
            iface,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("start gatewayd in the namespace");
        let mut gw = Self {
            ns: ns.to_owned(),
            child,
            admin_port,
            stderr,
            _dir: dir,
        };
        gw.wait_healthy();
        gw
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Option<gateway_tests::HttpResponse> {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        let out = NetnsPair::command_in(&self.ns, "curl")
            .args(["-s", "-i", "--max-time", "5", &url])
            .output()
            .ok()?;
        parse_response(&String::from_utf8_lossy(&out.stdout)).ok()
    }

    fn wait_healthy(&mut self) {
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gatewayd exited with {status}: {}", self.stderr());
            }
            if self.get("/healthz").is_some_and(|r| r.status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gatewayd did not become healthy: {}", self.stderr());
    }

    fn flows(&self) -> Vec<serde_json::Value> {
        let response = self.get("/flows").expect("GET /flows");
        assert_eq!(response.status, 200);
        serde_json::from_str::<Vec<serde_json::Value>>(&response.body)
            .expect("/flows is a JSON list")
    }
}

impl Drop for NsGatewayd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    if !ebpf_tests_can_run(
        "flows_report_exact_packets_and_l3_bytes_of_segments_sent_from_the_peer_namespace",
    ) {
        return;
    }
    let pair = NetnsPair::new("flow").expect("create namespaces");
    let gw = NsGatewayd::start(&pair.a, &pair.veth_a);

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

    std::thread::sleep(Duration::from_millis(200));
    let flows = gw.flows();
    let flow = find_flow(&flows, src, dst, 7777)
        .unwrap_or_else(|| panic!("no flow {src}:41000 -> {dst}:7777 in {flows:#?}"));
    assert_eq!(flow["src_port"], 41000);
    assert_eq!(flow["packets"], payloads.len() as u64, "{flow}");
    assert_eq!(flow["bytes"], expected_bytes, "{flow}");
    assert_eq!(flow["tcp_flags"], serde_json::json!(["PSH", "ACK"]));
}

#[test]
fn a_real_tcp_exchange_shows_as_a_flow_with_its_handshake_and_close() {
    if !ebpf_tests_can_run("a_real_tcp_exchange_shows_as_a_flow_with_its_handshake_and_close") {
        return;
    }
    let pair = NetnsPair::new("tcp").expect("create namespaces");
    let gw = NsGatewayd::start(&pair.a, &pair.veth_a);
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

    std::thread::sleep(Duration::from_millis(200));
    let flows = gw.flows();
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
    assert!(
        metrics.contains(&format!(
            "gatewayd_xdp_attached{{iface=\"{}\",mode=",
            pair.veth_a
        )),
        "{metrics}"
    );
}

#[test]
fn sigterm_detaches_xdp_and_exits_zero() {
    if !ebpf_tests_can_run("sigterm_detaches_xdp_and_exits_zero") {
        return;
    }
    let pair = NetnsPair::new("term").expect("create namespaces");
    let mut gw = NsGatewayd::start(&pair.a, &pair.veth_a);
    let link = |ns: &str, dev: &str| {
        String::from_utf8_lossy(
            &run_ok(Command::new("ip").args(["-n", ns, "link", "show", "dev", dev]))
                .expect("ip link")
                .stdout,
        )
        .into_owned()
    };
    assert!(
        link(&pair.a, &pair.veth_a).contains("xdp"),
        "attached: {}",
        link(&pair.a, &pair.veth_a)
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(gw.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let mut status = None;
    for _ in 0..200 {
        if let Ok(Some(s)) = gw.child.try_wait() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.expect("gatewayd exits after SIGTERM");
    assert!(status.success(), "exit status {status}: {}", gw.stderr());
    assert!(
        !link(&pair.a, &pair.veth_a).contains("xdp"),
        "still attached after exit: {}",
        link(&pair.a, &pair.veth_a)
    );
}
