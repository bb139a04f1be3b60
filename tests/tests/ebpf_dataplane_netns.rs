//! The eBPF dataplane of a real gatewayd in a network namespace, traffic from the
//! peer namespace over a veth pair: both directions of TCP counted in one flow, the
//! unlisted-port drop following config reloads, the ACL file (IPv4 and IPv6 sources) and
//! its reloads (on change, and on SIGHUP for a change no watcher sees), the SYN
//! guard, the pinned flow table across a restart, idle-flow GC, `/flows` queries, and
//! graceful fallback when a feature is refused.

#[macro_use]
mod support;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use gateway_tests::{netns::NetnsPair, run_ok, EMPTY_CONFIG};
use support::*;

const RST: u8 = 0x04;

/// `--ebpf required --xdp-iface <iface> --bpf-pin-dir none` and `extra`.
fn args<'a>(iface: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--ebpf",
        "required",
        "--xdp-iface",
        iface,
        "--bpf-pin-dir",
        "none",
    ];
    args.extend_from_slice(extra);
    args
}

fn pair(tag: &str) -> NetnsPair {
    let pair = NetnsPair::new(tag).expect("create namespaces");
    static_neighbours(&pair);
    pair
}

fn u64_of(value: &serde_json::Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

fn flags_of(value: &serde_json::Value) -> Vec<String> {
    let mut flags: Vec<String> = value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    flags.sort();
    flags
}

fn flag_names(bits: u8) -> Vec<String> {
    let mut names: Vec<String> = [
        (0x01, "FIN"),
        (0x02, "SYN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ]
    .iter()
    .filter(|(bit, _)| bits & bit != 0)
    .map(|(_, name)| (*name).to_owned())
    .collect();
    names.sort();
    names
}

/// Rewrites `path` atomically (as config management tools do).
fn replace_file(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn xdp_and_tc_count_both_directions_of_a_real_tcp_exchange_exactly_as_captured() {
    require_ebpf!("xdp_and_tc_count_both_directions_of_a_real_tcp_exchange_exactly_as_captured");
    let pair = pair("both");
    let dir = tempfile::tempdir().expect("temp dir");
    let gw = NsGatewayd::start(&pair.a, dir.path(), EMPTY_CONFIG, &args(&pair.veth_a, &[]));
    let (addr_a, addr_b) = (pair.addr_a, pair.addr_b);
    let capture = Capture::start(&pair.a);

    let listener = NetnsPair::run_in(&pair.a, move || {
        Ok(TcpListener::bind(SocketAddrV4::new(addr_a, 0))?)
    })
    .expect("listen in A");
    let port = listener.local_addr().expect("local addr").port();
    let (sent, reply_len) = (50_000usize, 200_000usize);
    let server = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut stream, _) = listener.accept()?;
        let mut received = Vec::new();
        stream.read_to_end(&mut received)?;
        stream.write_all(&vec![7u8; reply_len])?;
        stream.shutdown(Shutdown::Write)?;
        Ok(received.len())
    });
    let (client_port, reply) = NetnsPair::run_in(&pair.b, move || {
        let mut stream =
            TcpStream::connect_timeout(&SocketAddr::from((addr_a, port)), Duration::from_secs(5))?;
        let client_port = stream.local_addr()?.port();
        stream.write_all(&vec![1u8; sent])?;
        stream.shutdown(Shutdown::Write)?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply)?;
        Ok((client_port, reply.len()))
    })
    .expect("client in B");
    assert_eq!(reply, reply_len);
    assert_eq!(server.join().expect("server thread").expect("server"), sent);
    // The last ACK may still be on its way: wait until the flow stops changing.
    gw.settled_flows(&format!("?protocol=tcp&port={port}"));
    let seen = capture.finish();

    let sum = |src: Ipv4Addr, src_port: u16| {
        seen.iter()
            .filter(|s| s.src == src && s.src_port == src_port)
            .fold((0u64, 0u64, 0u8), |(p, b, f), s| {
                (p + s.segments, b + s.l3_bytes, f | s.flags)
            })
    };
    let (fwd_packets, fwd_bytes, fwd_flags) = sum(addr_b, client_port);
    let (rev_packets, rev_bytes, rev_flags) = sum(addr_a, port);
    assert!(
        rev_packets > 100,
        "the reply needs many segments: {rev_packets}"
    );

    let flows = gw.flows(&format!("?protocol=tcp&port={port}"));
    assert_eq!(flows.len(), 1, "one entry for both directions: {flows:#?}");
    let flow = &flows[0];
    assert_eq!(flow["src_addr"], addr_b.to_string());
    assert_eq!(flow["src_port"], client_port);
    assert_eq!(flow["dst_addr"], addr_a.to_string());
    assert_eq!(flow["direction"], "inbound");
    assert_eq!(
        (u64_of(&flow["packets"]), u64_of(&flow["bytes"])),
        (fwd_packets, fwd_bytes),
        "client -> server as the capture saw it: {flow}"
    );
    assert_eq!(
        (u64_of(&flow["rev_packets"]), u64_of(&flow["rev_bytes"])),
        (rev_packets, rev_bytes),
        "server -> client as the capture saw it (TSO super-packets as segments): {flow}"
    );
    assert_eq!(flags_of(&flow["tcp_flags"]), flag_names(fwd_flags));
    assert_eq!(flags_of(&flow["rev_tcp_flags"]), flag_names(rev_flags));
    for flag in ["SYN", "ACK", "FIN"] {
        assert!(flags_of(&flow["rev_tcp_flags"]).contains(&flag.to_owned()));
    }
    let metrics = gw.metrics();
    assert_eq!(metrics.feature("tc"), Some(1.0));
    assert!(
        metrics
            .0
            .keys()
            .any(|k| k.starts_with(&format!("gatewayd_tc_attached{{iface=\"{}\"", pair.veth_a))),
        "{metrics:?}"
    );
}

#[test]
fn unlisted_ports_are_dropped_in_xdp_and_follow_the_listeners_of_each_reload() {
    require_ebpf!("unlisted_ports_are_dropped_in_xdp_and_follow_the_listeners_of_each_reload");
    let pair = pair("unl");
    let dir = tempfile::tempdir().expect("temp dir");
    let gw = NsGatewayd::start(
        &pair.a,
        dir.path(),
        &gateway_yaml(&[8080]),
        &args(&pair.veth_a, &["--xdp-drop-unlisted"]),
    );
    let (a, b) = (pair.addr_a, pair.addr_b);
    let listener_8080 = "0.0.0.0:8080";
    let synced = gw.wait_metrics(WAIT, |m| {
        m.get("gatewayd_ebpf_listeners") == 2.0 && m.get("gatewayd_ebpf_gateway_addresses") >= 2.0
    });
    assert_eq!(
        synced.get("gatewayd_ebpf_listeners"),
        2.0,
        "0.0.0.0:8080 and [::]:8080"
    );
    assert_eq!(synced.feature("drop_unlisted"), Some(1.0));

    // To the listener port: RST segments, which no stack answers, so that the counters see
    // exactly these (whether or not something accepts on 8080).
    let mut packets: Vec<Vec<u8>> = (0..3)
        .map(|i| raw_tcp(b, a, (41000 + i, 9999), 0x02, &[]))
        .collect();
    packets.push(raw_udp(b, a, (41000, 9999), b"unlisted"));
    packets.push(raw_tcp(b, a, (42000, 8080), RST, &[]));
    packets.push(raw_tcp(b, a, (42001, 8080), RST, &[0; 10]));
    // The ephemeral range is never dropped: replies to the host's own connections.
    packets.push(raw_udp(b, a, (53, 50000), b"reply"));
    send_raw_v4(&pair.b, packets);

    let m = gw.wait_metrics(WAIT, |m| m.drops("unlisted") >= 4);
    assert_eq!(
        (m.drops("unlisted"), m.drops("acl"), m.drops("syn_flood")),
        (4, 0, 0)
    );
    assert_eq!(m.listener("packets", listener_8080, "rx"), 2);
    assert_eq!(m.listener("bytes", listener_8080, "rx"), 40 + 50);
    let flows = gw.flows("");
    assert!(
        flows.iter().all(|f| f["dst_port"] != 9999),
        "dropped packets make no flow: {flows:#?}"
    );
    assert_eq!(gw.flows("?port=8080").len(), 2);
    assert_eq!(gw.flows("?port=50000").len(), 1);

    // Reload: 9999 becomes a listener, 8080 goes away.
    replace_file(&dir.path().join("config.yaml"), &gateway_yaml(&[9999]));
    let m = gw.wait_metrics(WAIT, |m| {
        m.0.contains_key(
            "gatewayd_listener_packets_total{listener=\"0.0.0.0:9999\",protocol=\"http\",direction=\"rx\"}",
        ) && !m.0.contains_key(
            "gatewayd_listener_packets_total{listener=\"0.0.0.0:8080\",protocol=\"http\",direction=\"rx\"}",
        )
    });
    assert_eq!(m.get("gatewayd_ebpf_listeners"), 2.0, "{m:?}");
    send_raw_v4(
        &pair.b,
        vec![
            raw_tcp(b, a, (43000, 9999), RST, &[]),
            raw_tcp(b, a, (43001, 8080), RST, &[]),
        ],
    );
    let m = gw.wait_metrics(WAIT, |m| m.drops("unlisted") >= 5);
    assert_eq!(m.drops("unlisted"), 5, "8080 is unlisted now");
    assert_eq!(
        m.listener("packets", "0.0.0.0:9999", "rx"),
        1,
        "fresh counters for 9999"
    );
    assert_eq!(gw.flows("?port=9999").len(), 1);
}

#[test]
fn the_acl_file_drops_denied_sources_and_is_reloaded_on_change_and_on_sighup() {
    require_ebpf!("the_acl_file_drops_denied_sources_and_is_reloaded_on_change_and_on_sighup");
    let pair = pair("acl");
    let dir = tempfile::tempdir().expect("temp dir");
    let acl = dir.path().join("acl.txt");
    let (a, b) = (pair.addr_a, pair.addr_b);
    std::fs::write(
        &acl,
        format!("# denied sources\n{b}/32   # the peer\n2001:db8::/32\n"),
    )
    .expect("write ACL");
    let acl_arg = acl.to_string_lossy().into_owned();
    let gw = NsGatewayd::start(
        &pair.a,
        dir.path(),
        EMPTY_CONFIG,
        &args(&pair.veth_a, &["--acl", &acl_arg]),
    );
    let m = gw.metrics();
    assert_eq!(m.feature("acl"), Some(1.0));
    assert_eq!(m.get("gatewayd_acl_prefixes{family=\"ipv4\"}"), 1.0);
    assert_eq!(m.get("gatewayd_acl_prefixes{family=\"ipv6\"}"), 1.0);

    let udp = |n: u16| -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| raw_udp(b, a, (5000 + i, 7000), b"hello"))
            .collect()
    };
    send_raw_v4(&pair.b, udp(3));
    let m = gw.wait_metrics(WAIT, |m| m.drops("acl") >= 3);
    assert_eq!(m.drops("acl"), 3);
    assert!(gw.flows(&format!("?addr={b}")).is_empty());

    // A new file without the peer: its packets pass.
    replace_file(&acl, "203.0.113.0/24\n");
    let m = gw.wait_metrics(WAIT, |m| m.get("gatewayd_acl_reloads_total") >= 1.0);
    assert_eq!(m.get("gatewayd_acl_prefixes{family=\"ipv6\"}"), 0.0);
    send_raw_v4(&pair.b, udp(2));
    let query = format!("?addr={b}&protocol=udp");
    assert_eq!(gw.wait_flows(&query, |f| f.len() >= 2).len(), 2);
    assert_eq!(gw.metrics().drops("acl"), 3);

    // A broken file is refused; the previous ACL stays.
    replace_file(&acl, "not-a-cidr\n");
    let m = gw.wait_metrics(WAIT, |m| m.get("gatewayd_acl_reload_errors_total") >= 1.0);
    assert_eq!(m.get("gatewayd_acl_prefixes{family=\"ipv4\"}"), 1.0);
    // SIGHUP reloads it too (still broken: a second error).
    gw.hangup();
    gw.wait_metrics(WAIT, |m| m.get("gatewayd_acl_reload_errors_total") >= 2.0);
    assert!(
        gw.stderr().contains("line 1"),
        "the bad line is named: {}",
        gw.stderr()
    );

    // Fixed, denying the peer again.
    replace_file(&acl, &format!("{b}/24\n"));
    gw.wait_metrics(WAIT, |m| m.get("gatewayd_acl_reloads_total") >= 2.0);
    send_raw_v4(&pair.b, udp(1));
    let m = gw.wait_metrics(WAIT, |m| m.drops("acl") >= 4);
    assert_eq!(m.drops("acl"), 4);

    // SIGHUP picks up a change the file watcher cannot see. The ACL path becomes a symlink
    // into another directory (as Kubernetes mounts a ConfigMap); the watcher sees the
    // symlink replace the file (a reload, same content), but not the later change of the
    // file it points to, which lets the peer in.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let target = elsewhere.path().join("acl.txt");
    std::fs::write(&target, format!("{b}/24\n")).expect("write ACL");
    let link = dir.path().join("acl.link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    std::fs::rename(&link, &acl).expect("put the symlink in place");
    let m = gw.wait_metrics(WAIT, |m| m.get("gatewayd_acl_reloads_total") >= 3.0);
    assert_eq!(m.get("gatewayd_acl_reloads_total"), 3.0);
    std::fs::write(&target, "2001:db8::/32\n").expect("change the ACL behind the symlink");
    std::thread::sleep(Duration::from_secs(1));
    let m = gw.metrics();
    assert_eq!(
        m.get("gatewayd_acl_reloads_total"),
        3.0,
        "the watcher saw the change: the test cannot tell SIGHUP's part"
    );
    assert_eq!(m.get("gatewayd_acl_prefixes{family=\"ipv4\"}"), 1.0);
    gw.hangup();
    let m = gw.wait_metrics(WAIT, |m| m.get("gatewayd_acl_reloads_total") >= 4.0);
    assert_eq!(m.get("gatewayd_acl_reloads_total"), 4.0);
    assert_eq!(
        (
            m.get("gatewayd_acl_prefixes{family=\"ipv4\"}"),
            m.get("gatewayd_acl_prefixes{family=\"ipv6\"}")
        ),
        (0.0, 1.0)
    );
    assert!(
        gw.stderr()
            .lines()
            .any(|l| l.contains("ACL reloaded") && l.contains("SIGHUP")),
        "{}",
        gw.stderr()
    );
    let before = gw.flows(&query).len();
    send_raw_v4(&pair.b, vec![raw_udp(b, a, (5100, 7000), b"after SIGHUP")]);
    assert_eq!(
        gw.wait_flows(&query, |f| f.len() > before).len(),
        before + 1,
        "the peer passes now"
    );
    assert_eq!(gw.metrics().drops("acl"), 4);
}

#[test]
fn ipv6_sources_the_acl_denies_are_dropped_and_others_pass() {
    require_ebpf!("ipv6_sources_the_acl_denies_are_dropped_and_others_pass");
    let pair = pair("acl6");
    let (a6, b6) = enable_ipv6(&pair);
    let segments = b6.segments();
    let other = std::net::Ipv6Addr::new(segments[0], segments[1], segments[2], 0, 0, 0, 0, 3);
    ip(&[
        "-n",
        &pair.b,
        "-6",
        "addr",
        "add",
        &format!("{other}/64"),
        "dev",
        &pair.veth_b,
        "nodad",
    ]);
    let dir = tempfile::tempdir().expect("temp dir");
    let acl = dir.path().join("acl.txt");
    std::fs::write(&acl, format!("{b6}/128\n")).expect("write ACL");
    let acl_arg = acl.to_string_lossy().into_owned();
    let gw = NsGatewayd::start(
        &pair.a,
        dir.path(),
        EMPTY_CONFIG,
        &args(&pair.veth_a, &["--acl", &acl_arg]),
    );
    let m = gw.metrics();
    assert_eq!(
        (
            m.get("gatewayd_acl_prefixes{family=\"ipv4\"}"),
            m.get("gatewayd_acl_prefixes{family=\"ipv6\"}")
        ),
        (0.0, 1.0)
    );
    let send = |src: std::net::Ipv6Addr, n: usize| {
        NetnsPair::run_in(&pair.b, move || {
            let socket = std::net::UdpSocket::bind((src, 0))?;
            for _ in 0..n {
                socket.send_to(b"hello", (a6, 7000))?;
            }
            Ok(())
        })
        .expect("send from the peer namespace");
    };
    send(b6, 3);
    let m = gw.wait_metrics(WAIT, |m| m.drops("acl") >= 3);
    assert_eq!(m.drops("acl"), 3, "the denied source");
    assert!(gw.flows(&format!("?addr={b6}")).is_empty());

    send(other, 2);
    let flows = gw.wait_flows(&format!("?addr={other}&protocol=udp"), |f| {
        f.iter().map(|f| u64_of(&f["packets"])).sum::<u64>() >= 2
    });
    assert_eq!(flows.len(), 1, "{flows:#?}");
    assert_eq!(u64_of(&flows[0]["packets"]), 2);
    assert_eq!(flows[0]["dst_addr"], a6.to_string());
    assert_eq!(
        gw.metrics().drops("acl"),
        3,
        "another source of the prefix passes"
    );
}

#[test]
fn the_syn_guard_drops_syns_beyond_the_burst_of_each_source() {
    require_ebpf!("the_syn_guard_drops_syns_beyond_the_burst_of_each_source");
    let pair = pair("syn");
    let dir = tempfile::tempdir().expect("temp dir");
    let gw = NsGatewayd::start(
        &pair.a,
        dir.path(),
        EMPTY_CONFIG,
        &args(&pair.veth_a, &["--syn-rate-limit", "1:5"]),
    );
    let (a, b) = (pair.addr_a, pair.addr_b);
    let other = Ipv4Addr::new(b.octets()[0], b.octets()[1], b.octets()[2], 3);
    ip(&[
        "-n",
        &pair.b,
        "addr",
        "add",
        &format!("{other}/24"),
        "dev",
        &pair.veth_b,
    ]);
    assert_eq!(gw.metrics().feature("syn_guard"), Some(1.0));

    let mut packets: Vec<Vec<u8>> = (0..20)
        .map(|i| raw_tcp(b, a, (44000 + i, 7777), 0x02, &[]))
        .collect();
    packets.extend((0..2).map(|i| raw_tcp(other, a, (44000 + i, 7777), 0x02, &[])));
    send_raw_v4(&pair.b, packets);

    let m = gw.wait_metrics(WAIT, |m| m.drops("syn_flood") >= 15);
    assert_eq!(m.drops("syn_flood"), 15, "20 SYNs, a burst of 5");
    let flows = gw.flows("?port=7777");
    let from = |src: Ipv4Addr| {
        flows
            .iter()
            .filter(|f| f["src_addr"] == src.to_string())
            .count()
    };
    assert_eq!(from(b), 5);
    assert_eq!(from(other), 2, "another source has its own bucket");
}

#[test]
fn a_pinned_flow_table_survives_a_restart_and_goes_on_counting() {
    require_ebpf!("a_pinned_flow_table_survives_a_restart_and_goes_on_counting");
    let pair = pair("pin");
    let dir = tempfile::tempdir().expect("temp dir");
    let bpffs = Bpffs::mount();
    let pin_dir = bpffs.path.join("gatewayd");
    let pin_arg = pin_dir.to_string_lossy().into_owned();
    let start_args = [
        "--ebpf",
        "required",
        "--xdp-iface",
        pair.veth_a.as_str(),
        "--bpf-pin-dir",
        pin_arg.as_str(),
    ];
    let (a, b) = (pair.addr_a, pair.addr_b);
    let udp = |n: u16| -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| raw_udp(b, a, (6000, 6001), &[0; 100]))
            .collect()
    };
    let packets_of = |gw: &NsGatewayd| -> u64 {
        gw.flows("?port=6001")
            .first()
            .map_or(0, |f| u64_of(&f["packets"]))
    };

    let mut first = NsGatewayd::start(&pair.a, dir.path(), EMPTY_CONFIG, &start_args);
    assert_eq!(first.metrics().feature("pinning"), Some(1.0));
    send_raw_v4(&pair.b, udp(4));
    first.wait_metrics(WAIT, |_| packets_of(&first) >= 4);
    assert_eq!(packets_of(&first), 4);
    assert!(first.stop().success(), "{}", first.stderr());
    assert!(
        pin_dir.join("FLOWS").exists(),
        "the pin outlives the process"
    );
    let link =
        run_ok(Command::new("ip").args(["-n", &pair.a, "link", "show", "dev", &pair.veth_a]))
            .expect("ip link");
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "programs detach on exit"
    );

    let second = NsGatewayd::start(&pair.a, dir.path(), EMPTY_CONFIG, &start_args);
    assert_eq!(
        packets_of(&second),
        4,
        "the flow is still there after the restart"
    );
    send_raw_v4(&pair.b, udp(3));
    second.wait_metrics(WAIT, |_| packets_of(&second) >= 7);
    let flow = second.flows("?port=6001").remove(0);
    assert_eq!(u64_of(&flow["packets"]), 7);
    assert_eq!(u64_of(&flow["bytes"]), 7 * (20 + 8 + 100));
    drop(second);
}

#[test]
fn idle_flows_are_removed_after_the_idle_timeout() {
    require_ebpf!("idle_flows_are_removed_after_the_idle_timeout");
    let pair = pair("gc");
    let dir = tempfile::tempdir().expect("temp dir");
    let gw = NsGatewayd::start(
        &pair.a,
        dir.path(),
        EMPTY_CONFIG,
        &args(&pair.veth_a, &["--flow-idle-timeout", "1"]),
    );
    // A RST draws no answer: exactly one flow.
    send_raw_v4(
        &pair.b,
        vec![raw_tcp(pair.addr_b, pair.addr_a, (6000, 6002), RST, &[])],
    );
    assert_eq!(gw.wait_flows("?port=6002", |f| !f.is_empty()).len(), 1);
    let m = gw.wait_metrics(Duration::from_secs(6), |m| {
        m.get("gatewayd_flows_gc_evicted_total") >= 1.0
    });
    assert_eq!(m.get("gatewayd_flows_gc_evicted_total"), 1.0);
    assert_eq!(m.get("gatewayd_flows"), 0.0);
    assert!(gw.flows("").is_empty());
}

#[test]
fn flows_can_be_filtered_by_protocol_address_port_and_listener_and_cut_to_the_top_n() {
    require_ebpf!(
        "flows_can_be_filtered_by_protocol_address_port_and_listener_and_cut_to_the_top_n"
    );
    let pair = pair("qry");
    let dir = tempfile::tempdir().expect("temp dir");
    let gw = NsGatewayd::start(
        &pair.a,
        dir.path(),
        &gateway_yaml(&[8080]),
        &args(&pair.veth_a, &[]),
    );
    gw.wait_metrics(WAIT, |m| m.get("gatewayd_ebpf_listeners") == 2.0);
    let (a, b) = (pair.addr_a, pair.addr_b);
    // RST segments draw no answer; the UDP datagram draws an ICMP port unreachable, a
    // flow of its own (port 0).
    send_raw_v4(
        &pair.b,
        vec![
            raw_tcp(b, a, (45000, 8080), RST, &[]),
            raw_tcp(b, a, (45001, 7001), RST, &[0; 500]),
            raw_tcp(b, a, (45002, 7002), RST, &[0; 50]),
            raw_udp(b, a, (45003, 7003), &[0; 10]),
        ],
    );
    // Four flows from the peer and the ICMP answer to the datagram.
    gw.wait_flows(&format!("?addr={b}"), |f| f.len() >= 5);
    let ports = |query: &str| -> Vec<u64> {
        gw.flows(query)
            .iter()
            .map(|f| u64_of(&f["dst_port"]))
            .collect()
    };
    assert_eq!(ports("?protocol=udp"), [7003]);
    assert_eq!(
        ports("?protocol=tcp"),
        [7001, 7002, 8080],
        "most bytes first"
    );
    assert_eq!(ports("?protocol=icmp"), [0]);
    assert_eq!(ports("?port=7002"), [7002]);
    assert_eq!(ports(&format!("?addr={b}&top=2")), [7001, 7002]);
    assert_eq!(ports("?listener=0.0.0.0:8080"), [8080]);
    assert_eq!(ports("?top=1"), [7001]);
    let listener = gw.flows("?port=8080").remove(0);
    assert_eq!(listener["listener"], "0.0.0.0:8080");
    assert_eq!(ports("?protocol=17"), [7003], "a protocol by number");
    for (query, name) in [
        ("port=http", "port"),
        ("protocol=bogus", "protocol"),
        ("listener=eighty", "listener"),
    ] {
        let bad = gw.get(&format!("/flows?{query}")).expect("GET");
        assert_eq!(bad.status, 400, "{query}");
        assert!(bad.body.contains(name), "{query}: {}", bad.body);
    }
}

#[test]
fn an_unusable_pin_dir_turns_only_pinning_off_with_one_warning() {
    require_ebpf!("an_unusable_pin_dir_turns_only_pinning_off_with_one_warning");
    let pair = pair("nopin");
    let dir = tempfile::tempdir().expect("temp dir");
    let gw = NsGatewayd::start(
        &pair.a,
        dir.path(),
        EMPTY_CONFIG,
        &[
            "--ebpf",
            "auto",
            "--xdp-iface",
            &pair.veth_a,
            "--bpf-pin-dir",
            "/proc/gatewayd-cannot-be-here",
        ],
    );
    let m = gw.metrics();
    assert_eq!(m.get("gatewayd_ebpf_loaded"), 1.0);
    assert_eq!(
        (m.feature("pinning"), m.feature("xdp"), m.feature("tc")),
        (Some(0.0), Some(1.0), Some(1.0))
    );
    let stderr = gw.stderr();
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "one warning: {stderr}");
    assert!(warnings[0].contains("pinning the flow table"), "{stderr}");
    assert!(!stderr.contains("eBPF unavailable"), "{stderr}");
    send_raw_v4(
        &pair.b,
        vec![raw_udp(pair.addr_b, pair.addr_a, (6000, 6003), b"x")],
    );
    assert_eq!(
        gw.wait_flows("?port=6003", |f| !f.is_empty()).len(),
        1,
        "flows are still counted"
    );
}

#[test]
fn an_interface_that_cannot_be_attached_is_skipped_with_one_warning_and_the_others_count() {
    require_ebpf!(
        "an_interface_that_cannot_be_attached_is_skipped_with_one_warning_and_the_others_count"
    );
    let pair = pair("skip");
    let dir = tempfile::tempdir().expect("temp dir");
    let gw = NsGatewayd::start(
        &pair.a,
        dir.path(),
        EMPTY_CONFIG,
        &[
            "--ebpf",
            "auto",
            "--xdp-iface",
            "gw-no-such0",
            "--xdp-iface",
            &pair.veth_a,
            "--bpf-pin-dir",
            "none",
        ],
    );
    let m = gw.metrics();
    assert_eq!(
        m.feature("xdp"),
        Some(0.0),
        "not on every interface asked for"
    );
    assert!(m
        .0
        .keys()
        .any(|k| k.starts_with(&format!("gatewayd_xdp_attached{{iface=\"{}\"", pair.veth_a))));
    assert!(!m.0.keys().any(|k| k.contains("gw-no-such0")));
    let stderr = gw.stderr();
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "one warning: {stderr}");
    assert!(warnings[0].contains("gw-no-such0"), "{stderr}");
    let (a, b) = (pair.addr_a, pair.addr_b);
    send_raw_v4(&pair.b, vec![raw_udp(b, a, (6000, 6004), b"x")]);
    assert_eq!(gw.wait_flows("?port=6004", |f| !f.is_empty()).len(), 1);
}

#[test]
fn a_listener_kept_across_reloads_never_counts_as_unlisted_while_the_table_changes() {
    require_ebpf!(
        "a_listener_kept_across_reloads_never_counts_as_unlisted_while_the_table_changes"
    );
    let pair = pair("keep");
    let dir = tempfile::tempdir().expect("temp dir");
    let gw = NsGatewayd::start(
        &pair.a,
        dir.path(),
        &gateway_yaml(&[8080, 9000]),
        &args(&pair.veth_a, &["--xdp-drop-unlisted"]),
    );
    gw.wait_metrics(WAIT, |m| m.get("gatewayd_ebpf_listeners") == 4.0);
    let (a, b) = (pair.addr_a, pair.addr_b);
    let config = dir.path().join("config.yaml");

    // A steady stream to the kept listener (RST segments: no answers), bounded in count,
    // while the other listeners come and go.
    const PACKETS: u16 = 3000;
    let ns_b = pair.b.clone();
    let sender = std::thread::spawn(move || {
        NetnsPair::run_in(&ns_b, move || {
            let socket = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(255)),
            )?;
            let to = socket2::SockAddr::from(SocketAddr::from((a, 0)));
            for i in 0..PACKETS {
                socket.send_to(&raw_tcp(b, a, (20000 + i, 8080), RST, &[]), &to)?;
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok(())
        })
    });
    // Add 9001, remove it, add 9002, remove it, ...: each step waits for its sync.
    for other in [9001u16, 9002, 9003] {
        let label = format!(
            "gatewayd_listener_packets_total{{listener=\"0.0.0.0:{other}\",protocol=\"http\",direction=\"rx\"}}"
        );
        replace_file(&config, &gateway_yaml(&[8080, other]));
        let m = gw.wait_metrics(WAIT, |m| m.0.contains_key(&label));
        assert!(m.0.contains_key(&label), "{other} added");
        replace_file(&config, &gateway_yaml(&[8080]));
        let m = gw.wait_metrics(WAIT, |m| !m.0.contains_key(&label));
        assert!(!m.0.contains_key(&label), "{other} removed");
    }
    sender.join().expect("sender thread").expect("send");
    let m = gw.wait_metrics(WAIT, |m| {
        m.listener("packets", "0.0.0.0:8080", "rx") >= u64::from(PACKETS)
    });
    assert_eq!(
        m.drops("unlisted"),
        0,
        "no packet to 8080 was ever unlisted"
    );
    assert_eq!(
        m.listener("packets", "0.0.0.0:8080", "rx"),
        u64::from(PACKETS),
        "every packet counted under the kept listener's id"
    );
    assert!(m.get("gatewayd_ebpf_listener_syncs_total") >= 7.0, "{m:?}");
}

#[test]
fn on_loopback_each_packet_is_counted_once_both_directions_by_xdp_alone() {
    require_ebpf!("on_loopback_each_packet_is_counted_once_both_directions_by_xdp_alone");
    let pair = pair("lo");
    let dir = tempfile::tempdir().expect("temp dir");
    let gw = NsGatewayd::start(&pair.a, dir.path(), EMPTY_CONFIG, &args("lo", &[]));
    let metrics = gw.metrics();
    // Loopback has no native XDP: generic (SKB) mode, as the kernel shows it too.
    assert_eq!(
        metrics
            .0
            .get("gatewayd_xdp_attached{iface=\"lo\",mode=\"generic\"}"),
        Some(&1.0),
        "{metrics:?}"
    );
    let link = run_ok(Command::new("ip").args(["-n", &pair.a, "link", "show", "dev", "lo"]))
        .expect("ip link");
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("xdpgeneric"), "{link}");
    assert!(
        !metrics
            .0
            .keys()
            .any(|k| k.starts_with("gatewayd_tc_attached")),
        "no TC on loopback: every packet there is also received"
    );

    let capture = Capture::start(&pair.a);
    let localhost = Ipv4Addr::LOCALHOST;
    let (server_port, client_port) = NetnsPair::run_in(&pair.a, move || {
        let listener = TcpListener::bind(SocketAddrV4::new(localhost, 0))?;
        let server_port = listener.local_addr()?.port();
        let server = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut stream, _) = listener.accept()?;
            let mut request = [0u8; 100];
            stream.read_exact(&mut request)?;
            stream.write_all(&[9u8; 100])?;
            Ok(())
        });
        let mut stream = TcpStream::connect((localhost, server_port))?;
        let client_port = stream.local_addr()?.port();
        stream.write_all(&[1u8; 100])?;
        let mut reply = [0u8; 100];
        stream.read_exact(&mut reply)?;
        drop(stream);
        server
            .join()
            .map_err(|_| anyhow::anyhow!("server thread"))??;
        Ok((server_port, client_port))
    })
    .expect("exchange over loopback");
    gw.settled_flows(&format!("?protocol=tcp&port={server_port}"));
    let seen = capture.finish();
    // A packet socket sees every loopback packet twice: going out and coming in.
    let sum = |src_port: u16| {
        let (packets, bytes) = seen
            .iter()
            .filter(|s| s.src == localhost && s.src_port == src_port)
            .fold((0u64, 0u64), |(p, b), s| (p + s.segments, b + s.l3_bytes));
        (packets / 2, bytes / 2)
    };
    let flows = gw.flows(&format!("?protocol=tcp&port={server_port}"));
    assert_eq!(flows.len(), 1, "{flows:#?}");
    let flow = &flows[0];
    assert_eq!(flow["src_port"], client_port);
    assert_eq!(flow["direction"], "inbound");
    assert_eq!(
        (u64_of(&flow["packets"]), u64_of(&flow["bytes"])),
        sum(client_port),
        "{flow}"
    );
    assert_eq!(
        (u64_of(&flow["rev_packets"]), u64_of(&flow["rev_bytes"])),
        sum(server_port),
        "{flow}"
    );
}

#[test]
fn a_gateway_range_over_a_host_address_is_warned_about_under_drop_unlisted() {
    require_ebpf!("a_gateway_range_over_a_host_address_is_warned_about_under_drop_unlisted");
    let pair = pair("wide");
    let a = pair.addr_a;
    let [o1, o2, o3, _] = a.octets();
    let range = format!("{o1}.{o2}.{o3}.0/24");
    let config = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: x\n  addresses: [{{type: gateway.networking.example/CIDR, value: \"{range}\"}}]\n  listeners:\n  - {{name: http, protocol: HTTP, port: 8080}}\n"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let gw = NsGatewayd::start(
        &pair.a,
        dir.path(),
        &config,
        &args(&pair.veth_a, &["--xdp-drop-unlisted"]),
    );
    let expected =
        format!("Gateway default/gw address range {range} contains {a}, an address of this host");
    let deadline = Instant::now() + WAIT;
    while !gw.stderr().contains(&expected) {
        assert!(Instant::now() < deadline, "no warning: {}", gw.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let stderr = gw.stderr();
    assert_eq!(
        stderr.matches(&expected).count(),
        1,
        "once per configuration: {stderr}"
    );
    assert!(
        !stderr.contains(&format!("contains {}", pair.addr_b)),
        "only the host's own addresses: {stderr}"
    );
}
