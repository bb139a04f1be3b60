//! `xdp_flow` run by the kernel on crafted frames (`BPF_PROG_TEST_RUN`): exact `FLOWS` keys
//! and counters, exact `STATS`.

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use gateway_common::{
    FlowKey, FlowValue, Stats, FAMILY_IPV4, FAMILY_IPV6, IPPROTO_TCP, IPPROTO_UDP,
};
use gateway_tests::ebpf_tests_can_run;

const XDP_PASS: u32 = 2;

/// A freshly loaded `xdp_flow` with its own, empty maps.
struct Loaded {
    ebpf: Ebpf,
}

impl Loaded {
    fn new() -> Self {
        let mut ebpf =
            Ebpf::load(gateway_userspace::ebpf::object()).expect("load the embedded eBPF object");
        let program: &mut Xdp = ebpf
            .program_mut("xdp_flow")
            .expect("program xdp_flow")
            .try_into()
            .expect("xdp_flow is an XDP program");
        program.load().expect("the verifier accepts xdp_flow");
        Self { ebpf }
    }

    fn program(&self) -> &Xdp {
        self.ebpf
            .program("xdp_flow")
            .expect("program xdp_flow")
            .try_into()
            .expect("xdp_flow is an XDP program")
    }

    fn run(&self, frame: &[u8]) -> u32 {
        self.run_repeat(frame, 1).return_value
    }

    fn run_repeat(&self, frame: &[u8], repeat: u32) -> aya::programs::TestRunResult {
        let result: Result<_, ProgramError> = self.program().test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        });
        result.expect("BPF_PROG_TEST_RUN")
    }

    fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        let map: HashMap<&MapData, FlowKey, FlowValue> =
            HashMap::try_from(self.ebpf.map("FLOWS").expect("map FLOWS"))
                .expect("FLOWS is a hash map");
        let mut flows: Vec<_> = map.iter().map(|r| r.expect("read FLOWS entry")).collect();
        flows.sort_by_key(|(k, _)| (k.family, k.src_addr, k.src_port));
        flows
    }

    fn stats(&self) -> Stats {
        let map: PerCpuArray<&MapData, Stats> =
            PerCpuArray::try_from(self.ebpf.map("STATS").expect("map STATS"))
                .expect("STATS is a per-CPU array");
        map.get(&0, 0)
            .expect("STATS[0]")
            .iter()
            .fold(Stats::default(), |a, s| Stats {
                packets: a.packets + s.packets,
                bytes: a.bytes + s.bytes,
                parse_failures: a.parse_failures + s.parse_failures,
                non_ip: a.non_ip + s.non_ip,
            })
    }
}

// ---- frame builders -------------------------------------------------------------------

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

fn ethernet(ether_type: u16, vlan: Option<u16>) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    if let Some(vid) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ether_type.to_be_bytes());
    f
}

fn ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, l4: &[u8], frag_offset: u16) -> Vec<u8> {
    let total = (20 + l4.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1]); // id
    h.extend_from_slice(&frag_offset.to_be_bytes());
    h.extend_from_slice(&[64, protocol, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(l4);
    h
}

fn ipv6(src: [u8; 16], dst: [u8; 16], next_header: u8, l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next_header, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(l4);
    h
}

fn tcp(src_port: u16, dst_port: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&src_port.to_be_bytes());
    t.extend_from_slice(&dst_port.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // seq, ack
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]); // data offset 5, flags, window, csum, urg
    t.extend_from_slice(payload);
    t
}

fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&src_port.to_be_bytes());
    u.extend_from_slice(&dst_port.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn frame(mut eth: Vec<u8>, l3: &[u8]) -> Vec<u8> {
    eth.extend_from_slice(l3);
    eth
}

const V4_A: [u8; 4] = [192, 0, 2, 10];
const V4_B: [u8; 4] = [198, 51, 100, 20];
const V6_A: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a,
];
const V6_B: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b,
];

fn v4_key(src: [u8; 4], dst: [u8; 4], protocol: u8, src_port: u16, dst_port: u16) -> FlowKey {
    let mut key = FlowKey {
        src_port,
        dst_port,
        protocol,
        family: FAMILY_IPV4,
        ..FlowKey::default()
    };
    key.src_addr[..4].copy_from_slice(&src);
    key.dst_addr[..4].copy_from_slice(&dst);
    key
}

macro_rules! require_ebpf {
    ($name:literal) => {
        if !ebpf_tests_can_run($name) {
            return;
        }
    };
}

// ---- tests ----------------------------------------------------------------------------

#[test]
fn ipv4_tcp_segments_make_one_flow_with_exact_counters_and_flags() {
    require_ebpf!("ipv4_tcp_segments_make_one_flow_with_exact_counters_and_flags");
    let prog = Loaded::new();
    let syn = frame(
        ethernet(0x0800, None),
        &ipv4(V4_A, V4_B, IPPROTO_TCP, &tcp(40000, 443, 0x02, &[]), 0),
    );
    let data = frame(
        ethernet(0x0800, None),
        &ipv4(
            V4_A,
            V4_B,
            IPPROTO_TCP,
            &tcp(40000, 443, 0x18, &[7u8; 100]),
            0,
        ),
    );
    assert_eq!(prog.run(&syn), XDP_PASS);
    assert_eq!(prog.run(&data), XDP_PASS);

    let flows = prog.flows();
    assert_eq!(flows.len(), 1, "{flows:?}");
    let (key, value) = flows[0];
    assert_eq!(key, v4_key(V4_A, V4_B, IPPROTO_TCP, 40000, 443));
    assert_eq!(key.src_addr[4..], [0u8; 12], "IPv4 keys are zero-padded");
    assert_eq!(value.packets, 2);
    assert_eq!(value.bytes, 40 + 140, "L3 bytes: IPv4 total lengths");
    assert_eq!(value.tcp_flags, 0x02 | 0x18);
    assert!(value.first_seen_ns > 0 && value.last_seen_ns >= value.first_seen_ns);

    let stats = prog.stats();
    assert_eq!(
        stats,
        Stats {
            packets: 2,
            bytes: (syn.len() + data.len()) as u64,
            parse_failures: 0,
            non_ip: 0
        }
    );
}

#[test]
fn ipv6_udp_datagram_makes_a_flow_with_sixteen_byte_addresses() {
    require_ebpf!("ipv6_udp_datagram_makes_a_flow_with_sixteen_byte_addresses");
    let prog = Loaded::new();
    let dgram = frame(
        ethernet(0x86DD, None),
        &ipv6(V6_A, V6_B, IPPROTO_UDP, &udp(5353, 53, &[1u8; 30])),
    );
    for _ in 0..3 {
        assert_eq!(prog.run(&dgram), XDP_PASS);
    }
    let flows = prog.flows();
    assert_eq!(flows.len(), 1, "{flows:?}");
    let (key, value) = flows[0];
    assert_eq!(
        key,
        FlowKey {
            src_addr: V6_A,
            dst_addr: V6_B,
            src_port: 5353,
            dst_port: 53,
            protocol: IPPROTO_UDP,
            family: FAMILY_IPV6,
            _pad: [0; 2],
        }
    );
    assert_eq!(value.packets, 3);
    assert_eq!(value.bytes, 3 * (40 + 8 + 30));
    assert_eq!(value.tcp_flags, 0);
    assert_eq!(value.rev_packets, 0);
    assert_eq!(
        prog.stats(),
        Stats {
            packets: 3,
            bytes: 3 * dgram.len() as u64,
            parse_failures: 0,
            non_ip: 0
        }
    );
}

#[test]
fn vlan_tagged_frame_is_parsed_past_the_tag() {
    require_ebpf!("vlan_tagged_frame_is_parsed_past_the_tag");
    let prog = Loaded::new();
    let tagged = frame(
        ethernet(0x0800, Some(100)),
        &ipv4(V4_B, V4_A, IPPROTO_UDP, &udp(1000, 2000, b"hi"), 0),
    );
    assert_eq!(tagged.len(), 14 + 4 + 20 + 8 + 2);
    assert_eq!(prog.run(&tagged), XDP_PASS);
    let flows = prog.flows();
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert_eq!(flows[0].0, v4_key(V4_B, V4_A, IPPROTO_UDP, 1000, 2000));
    assert_eq!(
        (flows[0].1.packets, flows[0].1.bytes),
        (1, 20 + 8 + 2),
        "L3 bytes: the tag is not counted"
    );
    assert_eq!(
        prog.stats(),
        Stats {
            packets: 1,
            bytes: tagged.len() as u64,
            parse_failures: 0,
            non_ip: 0
        },
        "the frame bytes, tag included; IP behind the tag is not non-IP"
    );
}

#[test]
fn ipv6_extension_headers_are_walked_to_the_transport_ports() {
    require_ebpf!("ipv6_extension_headers_are_walked_to_the_transport_ports");
    let prog = Loaded::new();
    // Hop-by-hop options (8 bytes, next = TCP) then TCP.
    let mut ext = vec![IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0];
    ext.extend_from_slice(&tcp(33000, 8443, 0x02, &[]));
    let pkt = frame(ethernet(0x86DD, None), &ipv6(V6_A, V6_B, 0, &ext));
    assert_eq!(prog.run(&pkt), XDP_PASS);
    let flows = prog.flows();
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert_eq!(
        (
            flows[0].0.protocol,
            flows[0].0.src_port,
            flows[0].0.dst_port
        ),
        (IPPROTO_TCP, 33000, 8443)
    );
    assert_eq!(flows[0].1.tcp_flags, 0x02);
}

#[test]
fn non_first_ipv4_fragment_counts_without_ports() {
    require_ebpf!("non_first_ipv4_fragment_counts_without_ports");
    let prog = Loaded::new();
    // Offset 185 (x8 bytes): the payload is the middle of a UDP datagram, not a header.
    let frag = frame(
        ethernet(0x0800, None),
        &ipv4(V4_A, V4_B, IPPROTO_UDP, &[0xAB; 16], 185),
    );
    assert_eq!(prog.run(&frag), XDP_PASS);
    let flows = prog.flows();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].0, v4_key(V4_A, V4_B, IPPROTO_UDP, 0, 0));
}

#[test]
fn non_ip_frames_are_counted_as_non_ip_and_make_no_flow() {
    require_ebpf!("non_ip_frames_are_counted_as_non_ip_and_make_no_flow");
    let prog = Loaded::new();
    // ARP request.
    let arp = frame(
        ethernet(0x0806, None),
        &[
            0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 192, 0, 2, 10, 0, 0, 0, 0, 0, 0, 192, 0, 2,
            11,
        ],
    );
    assert_eq!(prog.run(&arp), XDP_PASS);
    assert!(prog.flows().is_empty());
    assert_eq!(
        prog.stats(),
        Stats {
            packets: 1,
            bytes: arp.len() as u64,
            parse_failures: 0,
            non_ip: 1
        }
    );
}

#[test]
fn frames_truncated_at_each_header_are_parse_failures_and_make_no_flow() {
    require_ebpf!("frames_truncated_at_each_header_are_parse_failures_and_make_no_flow");
    let v4_tcp = frame(
        ethernet(0x0800, None),
        &ipv4(V4_A, V4_B, IPPROTO_TCP, &tcp(1, 2, 0x02, &[]), 0),
    );
    let v4_udp = frame(
        ethernet(0x0800, None),
        &ipv4(V4_A, V4_B, IPPROTO_UDP, &udp(1, 2, &[]), 0),
    );
    let v6_tcp = frame(
        ethernet(0x86DD, None),
        &ipv6(V6_A, V6_B, IPPROTO_TCP, &tcp(1, 2, 0x02, &[])),
    );
    let v6_udp = frame(
        ethernet(0x86DD, None),
        &ipv6(V6_A, V6_B, IPPROTO_UDP, &udp(1, 2, &[])),
    );
    let vlan = frame(
        ethernet(0x0800, Some(7)),
        &ipv4(V4_A, V4_B, IPPROTO_UDP, &udp(1, 2, &[]), 0),
    );
    let mut v4_options = v4_tcp.clone();
    v4_options[14] = 0x46; // IHL 6: 4 option bytes the frame does not have before TCP ends
    v4_options.truncate(14 + 20 + 2);
    let mut bad_version = v4_udp.clone();
    bad_version[14] = 0x65; // version 6 in an IPv4 EtherType

    let cases: Vec<(&str, Vec<u8>)> = vec![
        // The kernel refuses test frames shorter than an Ethernet header, so the first cut
        // is inside the VLAN tag.
        ("vlan tag", vlan[..16].to_vec()),
        ("ipv4 header", v4_tcp[..14 + 19].to_vec()),
        ("ipv4 header behind vlan", vlan[..18 + 10].to_vec()),
        ("ipv4 options", v4_options),
        ("tcp header after ipv4", v4_tcp[..14 + 20 + 19].to_vec()),
        ("udp header after ipv4", v4_udp[..14 + 20 + 7].to_vec()),
        ("ipv6 header", v6_tcp[..14 + 39].to_vec()),
        ("tcp header after ipv6", v6_tcp[..14 + 40 + 12].to_vec()),
        ("udp header after ipv6", v6_udp[..14 + 40 + 4].to_vec()),
        ("ip version mismatch", bad_version),
    ];
    for (what, bytes) in &cases {
        let prog = Loaded::new();
        assert_eq!(prog.run(bytes), XDP_PASS, "{what}: every packet passes");
        assert!(
            prog.flows().is_empty(),
            "{what}: no flow from a truncated frame"
        );
        assert_eq!(
            prog.stats(),
            Stats {
                packets: 1,
                bytes: bytes.len() as u64,
                parse_failures: 1,
                non_ip: 0
            },
            "{what}"
        );
    }
}

#[test]
fn repeated_runs_accumulate_exactly() {
    require_ebpf!("repeated_runs_accumulate_exactly");
    let prog = Loaded::new();
    let pkt = frame(
        ethernet(0x0800, None),
        &ipv4(V4_A, V4_B, IPPROTO_UDP, &udp(9, 9, &[0; 64]), 0),
    );
    let result = prog.run_repeat(&pkt, 1000);
    assert_eq!(result.return_value, XDP_PASS);
    let flows = prog.flows();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].1.packets, 1000);
    assert_eq!(flows[0].1.bytes, 1000 * (20 + 8 + 64));
    assert_eq!(prog.stats().packets, 1000);
}
