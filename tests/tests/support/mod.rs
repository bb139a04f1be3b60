//! Helpers for the eBPF dataplane tests: crafted frames, the embedded object
//! loaded with both programs for `BPF_PROG_TEST_RUN`, gatewayd inside a network namespace,
//! raw packets sent from the peer namespace, and `/metrics` parsing.
//!
//! Each test file uses a part of this; the rest is dead code there.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use gateway_common::{
    steer_v4, steer_v6, AddrKey, DataplaneConfig, DropReason, FlowKey, FlowValue, ListenerKey,
    ListenerStats, ListenerValue, Stats, FAMILY_IPV4, FAMILY_IPV6, IPPROTO_TCP, IPPROTO_UDP,
    MAP_ACL_V4, MAP_ACL_V6, MAP_CONFIG, MAP_DROPS, MAP_FLOWS, MAP_GATEWAY_ADDRS,
    MAP_GATEWAY_RANGES_V4, MAP_GATEWAY_RANGES_V6, MAP_LISTENERS, MAP_LISTENER_PORTS,
    MAP_LISTENER_RANGES_V4, MAP_LISTENER_RANGES_V6, MAP_LISTENER_STATS, MAP_STATS, PROG_TC_REPLY,
    PROG_XDP_FLOW, STEER_PORT_BITS,
};
use gateway_tests::{netns::NetnsPair, parse_response, HttpResponse};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const TC_ACT_OK: u32 = 0;

// ---- frames -----------------------------------------------------------------------------

pub const V4_A: [u8; 4] = [192, 0, 2, 10];
pub const V4_B: [u8; 4] = [198, 51, 100, 20];
pub const V4_C: [u8; 4] = [203, 0, 113, 30];
pub const V6_A: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a,
];
pub const V6_B: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b,
];
pub const V6_OTHER: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01];

pub const SYN: u8 = 0x02;
pub const SYN_ACK: u8 = 0x12;
pub const ACK: u8 = 0x10;
pub const PSH_ACK: u8 = 0x18;
pub const FIN_ACK: u8 = 0x11;

/// An Ethernet header (no VLAN) for `ether_type`.
pub fn ethernet(ether_type: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&ether_type.to_be_bytes());
    f
}

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP header (20 bytes, no options) and payload, checksummed for `src` -> `dst`.
pub fn tcp(src: IpAddr, dst: IpAddr, ports: (u16, u16), flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&ports.0.to_be_bytes());
    t.extend_from_slice(&ports.1.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0x10, 0, 0, 0, 0, 0]); // seq, ack
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    let sum = checksum(&t, pseudo_header_sum(src, dst, IPPROTO_TCP, t.len()));
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    t
}

/// A UDP header and payload, checksummed for `src` -> `dst`.
pub fn udp(src: IpAddr, dst: IpAddr, ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&ports.0.to_be_bytes());
    u.extend_from_slice(&ports.1.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let sum = checksum(&u, pseudo_header_sum(src, dst, IPPROTO_UDP, u.len()));
    u[6..8].copy_from_slice(&sum.to_be_bytes());
    u
}

fn pseudo_header_sum(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> u32 {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, protocol]);
            pseudo.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, protocol]);
        }
        _ => panic!("mixed address families"),
    }
    let mut sum = 0u32;
    for chunk in pseudo.chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], chunk[1]]));
    }
    sum
}

/// An IPv4 packet (header checksummed) around `l4`.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, l4: &[u8]) -> Vec<u8> {
    let total = (20 + l4.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, protocol, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let sum = checksum(&h, 0);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(l4);
    h
}

/// An IPv6 packet around `l4`.
pub fn ipv6(src: [u8; 16], dst: [u8; 16], next_header: u8, l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next_header, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(l4);
    h
}

/// An Ethernet frame carrying an IPv4 TCP segment.
pub fn v4_tcp(src: [u8; 4], dst: [u8; 4], ports: (u16, u16), flags: u8, payload: &[u8]) -> Vec<u8> {
    let l4 = tcp(src.into(), dst.into(), ports, flags, payload);
    let mut f = ethernet(0x0800);
    f.extend_from_slice(&ipv4(src, dst, IPPROTO_TCP, &l4));
    f
}

/// An Ethernet frame carrying an IPv4 UDP datagram.
pub fn v4_udp(src: [u8; 4], dst: [u8; 4], ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
    let l4 = udp(src.into(), dst.into(), ports, payload);
    let mut f = ethernet(0x0800);
    f.extend_from_slice(&ipv4(src, dst, IPPROTO_UDP, &l4));
    f
}

/// An Ethernet frame carrying an IPv4 ICMP echo request.
pub fn v4_icmp(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0, 1, 0, 1];
    let sum = checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = ethernet(0x0800);
    f.extend_from_slice(&ipv4(src, dst, 1, &icmp));
    f
}

/// An Ethernet frame carrying an IPv6 TCP segment.
pub fn v6_tcp(
    src: [u8; 16],
    dst: [u8; 16],
    ports: (u16, u16),
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let l4 = tcp(src.into(), dst.into(), ports, flags, payload);
    let mut f = ethernet(0x86DD);
    f.extend_from_slice(&ipv6(src, dst, IPPROTO_TCP, &l4));
    f
}

pub fn v4_key(src: [u8; 4], dst: [u8; 4], protocol: u8, ports: (u16, u16)) -> FlowKey {
    let mut key = FlowKey {
        src_port: ports.0,
        dst_port: ports.1,
        protocol,
        family: FAMILY_IPV4,
        ..FlowKey::default()
    };
    key.src_addr[..4].copy_from_slice(&src);
    key.dst_addr[..4].copy_from_slice(&dst);
    key
}

pub fn v4_listener(addr: [u8; 4], port: u16) -> ListenerKey {
    let mut key = ListenerKey {
        port,
        protocol: IPPROTO_TCP,
        family: FAMILY_IPV4,
        ..ListenerKey::default()
    };
    key.addr[..4].copy_from_slice(&addr);
    key
}

pub fn v4_addr(addr: [u8; 4]) -> AddrKey {
    let mut key = AddrKey {
        family: FAMILY_IPV4,
        ..AddrKey::default()
    };
    key.addr[..4].copy_from_slice(&addr);
    key
}

pub fn v6_addr(addr: [u8; 16]) -> AddrKey {
    AddrKey {
        addr,
        family: FAMILY_IPV6,
        _pad: [0; 3],
    }
}

// ---- BPF_PROG_TEST_RUN --------------------------------------------------------------------

/// A freshly loaded object, both programs loaded, with its own empty maps.
pub struct Loaded {
    pub ebpf: Ebpf,
}

/// Offset of `gso_segs` in `struct __sk_buff` (uapi/linux/bpf.h).
const SKB_GSO_SEGS: usize = 164;
/// Offset of `gso_size` in `struct __sk_buff`.
const SKB_GSO_SIZE: usize = 176;
/// `sizeof(struct __sk_buff)`.
const SKB_CTX_LEN: usize = 192;

impl Loaded {
    pub fn new() -> Self {
        let mut ebpf =
            Ebpf::load(gateway_userspace::ebpf::object()).expect("load the embedded eBPF object");
        let xdp: &mut Xdp = ebpf
            .program_mut(PROG_XDP_FLOW)
            .expect("program xdp_flow")
            .try_into()
            .expect("xdp_flow is an XDP program");
        xdp.load().expect("the verifier accepts xdp_flow");
        let tc: &mut SchedClassifier = ebpf
            .program_mut(PROG_TC_REPLY)
            .expect("program tc_reply")
            .try_into()
            .expect("tc_reply is a classifier");
        tc.load().expect("the verifier accepts tc_reply");
        Self { ebpf }
    }

    pub fn xdp(&self) -> &Xdp {
        self.ebpf
            .program(PROG_XDP_FLOW)
            .expect("program xdp_flow")
            .try_into()
            .expect("xdp_flow is an XDP program")
    }

    pub fn tc(&self) -> &SchedClassifier {
        self.ebpf
            .program(PROG_TC_REPLY)
            .expect("program tc_reply")
            .try_into()
            .expect("tc_reply is a classifier")
    }

    /// Runs `xdp_flow` on `frame` once; its verdict.
    pub fn run_xdp(&self, frame: &[u8]) -> u32 {
        self.run_xdp_repeat(frame, 1).return_value
    }

    pub fn run_xdp_repeat(&self, frame: &[u8], repeat: u32) -> aya::programs::TestRunResult {
        let result: Result<_, ProgramError> = self.xdp().test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        });
        result.expect("BPF_PROG_TEST_RUN xdp_flow")
    }

    /// Runs `tc_reply` on `frame` as an skb of `gso_segs` segments (0: not GSO).
    pub fn run_tc(&self, frame: &[u8], gso_segs: u32) -> u32 {
        self.run_tc_repeat(frame, gso_segs, 1).return_value
    }

    pub fn run_tc_repeat(
        &self,
        frame: &[u8],
        gso_segs: u32,
        repeat: u32,
    ) -> aya::programs::TestRunResult {
        let mut ctx = [0u8; SKB_CTX_LEN];
        ctx[SKB_GSO_SEGS..SKB_GSO_SEGS + 4].copy_from_slice(&gso_segs.to_ne_bytes());
        if gso_segs > 1 {
            ctx[SKB_GSO_SIZE..SKB_GSO_SIZE + 4].copy_from_slice(&1400u32.to_ne_bytes());
        }
        let result: Result<_, ProgramError> = self.tc().test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::default()
        });
        result.expect("BPF_PROG_TEST_RUN tc_reply")
    }

    fn map_mut(&mut self, name: &str) -> &mut aya::maps::Map {
        self.ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("map {name}"))
    }

    pub fn set_config(&mut self, config: DataplaneConfig) {
        let mut map: Array<&mut MapData, DataplaneConfig> =
            Array::try_from(self.map_mut(MAP_CONFIG)).expect("CONFIG is an array");
        map.set(0, config, 0).expect("write CONFIG");
    }

    /// Adds a listener as gatewayd's sync does: its port bit, then its entry.
    pub fn add_listener(&mut self, key: ListenerKey, id: u32) {
        let mut ports: Array<&mut MapData, u64> =
            Array::try_from(self.map_mut(MAP_LISTENER_PORTS)).expect("LISTENER_PORTS is an array");
        let word = u32::from(key.port >> 6);
        let bits = ports.get(&word, 0).expect("read LISTENER_PORTS");
        ports
            .set(word, bits | 1 << (key.port & 63), 0)
            .expect("write LISTENER_PORTS");
        let mut map: HashMap<&mut MapData, ListenerKey, ListenerValue> =
            HashMap::try_from(self.map_mut(MAP_LISTENERS)).expect("LISTENERS is a hash");
        map.insert(key, ListenerValue { id, flags: 0 }, 0)
            .expect("write LISTENERS");
    }

    /// Adds a listener that serves the range `addr/len` on `port`, as gatewayd's sync
    /// does: its port bit, then its entry in the range trie of its family.
    pub fn add_listener_range(&mut self, addr: IpAddr, len: u32, port: u16, id: u32) {
        let mut ports: Array<&mut MapData, u64> =
            Array::try_from(self.map_mut(MAP_LISTENER_PORTS)).expect("LISTENER_PORTS is an array");
        let word = u32::from(port >> 6);
        let bits = ports.get(&word, 0).expect("read LISTENER_PORTS");
        ports
            .set(word, bits | 1 << (port & 63), 0)
            .expect("write LISTENER_PORTS");
        let value = ListenerValue { id, flags: 0 };
        match addr {
            IpAddr::V4(v4) => {
                let mut map: LpmTrie<&mut MapData, [u8; 6], ListenerValue> =
                    LpmTrie::try_from(self.map_mut(MAP_LISTENER_RANGES_V4))
                        .expect("LISTENER_RANGES_V4 is an LPM trie");
                map.insert(
                    &Key::new(STEER_PORT_BITS + len, steer_v4(port, v4.octets())),
                    value,
                    0,
                )
                .expect("write LISTENER_RANGES_V4");
            }
            IpAddr::V6(v6) => {
                let mut map: LpmTrie<&mut MapData, [u8; 18], ListenerValue> =
                    LpmTrie::try_from(self.map_mut(MAP_LISTENER_RANGES_V6))
                        .expect("LISTENER_RANGES_V6 is an LPM trie");
                map.insert(
                    &Key::new(STEER_PORT_BITS + len, steer_v6(port, v6.octets())),
                    value,
                    0,
                )
                .expect("write LISTENER_RANGES_V6");
            }
        }
    }

    /// Adds `addr/len` to the gateway's address ranges.
    pub fn add_gateway_range(&mut self, addr: IpAddr, len: u32) {
        match addr {
            IpAddr::V4(v4) => {
                let mut map: LpmTrie<&mut MapData, [u8; 4], u32> =
                    LpmTrie::try_from(self.map_mut(MAP_GATEWAY_RANGES_V4))
                        .expect("GATEWAY_RANGES_V4 is an LPM trie");
                map.insert(&Key::new(len, v4.octets()), 1, 0)
                    .expect("write GATEWAY_RANGES_V4");
            }
            IpAddr::V6(v6) => {
                let mut map: LpmTrie<&mut MapData, [u8; 16], u32> =
                    LpmTrie::try_from(self.map_mut(MAP_GATEWAY_RANGES_V6))
                        .expect("GATEWAY_RANGES_V6 is an LPM trie");
                map.insert(&Key::new(len, v6.octets()), 1, 0)
                    .expect("write GATEWAY_RANGES_V6");
            }
        }
    }

    pub fn add_gateway_addr(&mut self, key: AddrKey) {
        let mut map: HashMap<&mut MapData, AddrKey, u32> =
            HashMap::try_from(self.map_mut(MAP_GATEWAY_ADDRS)).expect("GATEWAY_ADDRS is a hash");
        map.insert(key, 1, 0).expect("write GATEWAY_ADDRS");
    }

    pub fn deny_v4(&mut self, addr: [u8; 4], len: u32) {
        let mut map: LpmTrie<&mut MapData, [u8; 4], u32> =
            LpmTrie::try_from(self.map_mut(MAP_ACL_V4)).expect("ACL_V4 is an LPM trie");
        map.insert(&Key::new(len, addr), 1, 0)
            .expect("write ACL_V4");
    }

    pub fn deny_v6(&mut self, addr: [u8; 16], len: u32) {
        let mut map: LpmTrie<&mut MapData, [u8; 16], u32> =
            LpmTrie::try_from(self.map_mut(MAP_ACL_V6)).expect("ACL_V6 is an LPM trie");
        map.insert(&Key::new(len, addr), 1, 0)
            .expect("write ACL_V6");
    }

    pub fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        let map: HashMap<&MapData, FlowKey, FlowValue> =
            HashMap::try_from(self.ebpf.map(MAP_FLOWS).expect("map FLOWS"))
                .expect("FLOWS is a hash map");
        let mut flows: Vec<_> = map.iter().map(|r| r.expect("read FLOWS entry")).collect();
        flows.sort_by_key(|(k, _)| (k.family, k.src_addr, k.src_port, k.dst_port));
        flows
    }

    pub fn stats(&self, slot: u32) -> Stats {
        let map: PerCpuArray<&MapData, Stats> =
            PerCpuArray::try_from(self.ebpf.map(MAP_STATS).expect("map STATS"))
                .expect("STATS is a per-CPU array");
        map.get(&slot, 0)
            .expect("STATS slot")
            .iter()
            .fold(Stats::default(), |a, s| Stats {
                packets: a.packets + s.packets,
                bytes: a.bytes + s.bytes,
                parse_failures: a.parse_failures + s.parse_failures,
                non_ip: a.non_ip + s.non_ip,
            })
    }

    /// `DROPS` as `[acl, unlisted, syn_flood]`.
    pub fn drops(&self) -> [u64; 3] {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(MAP_DROPS).expect("map DROPS"))
                .expect("DROPS is a per-CPU array");
        DropReason::ALL.map(|reason| {
            map.get(&(reason as u32), 0)
                .expect("DROPS slot")
                .iter()
                .sum()
        })
    }

    pub fn listener_stats(&self, id: u32) -> ListenerStats {
        let map: PerCpuArray<&MapData, ListenerStats> = PerCpuArray::try_from(
            self.ebpf
                .map(MAP_LISTENER_STATS)
                .expect("map LISTENER_STATS"),
        )
        .expect("LISTENER_STATS is a per-CPU array");
        map.get(&id, 0).expect("LISTENER_STATS slot").iter().fold(
            ListenerStats::default(),
            |a, s| ListenerStats {
                rx_packets: a.rx_packets + s.rx_packets,
                rx_bytes: a.rx_bytes + s.rx_bytes,
                tx_packets: a.tx_packets + s.tx_packets,
                tx_bytes: a.tx_bytes + s.tx_bytes,
            },
        )
    }
}

/// `if !ebpf_tests_can_run(name) { return; }`
macro_rules! require_ebpf {
    ($name:literal) => {
        if !gateway_tests::ebpf_tests_can_run($name) {
            return;
        }
    };
}

// ---- gatewayd in a namespace ------------------------------------------------------------

/// A Gateway named `gw` with one HTTP listener per port, on the unspecified addresses.
pub fn gateway_yaml(ports: &[u16]) -> String {
    let mut yaml = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\nspec:\n  gatewayClassName: x\n  listeners:\n",
    );
    for port in ports {
        yaml.push_str(&format!(
            "  - {{name: l{port}, protocol: HTTP, port: {port}}}\n"
        ));
    }
    if ports.is_empty() {
        return gateway_tests::EMPTY_CONFIG.to_owned();
    }
    yaml
}

/// How long a test waits for packets it sent to show in `/flows`.
pub const FLOWS_WAIT: Duration = Duration::from_secs(5);

/// gatewayd running inside namespace `ns` (admin on 127.0.0.1:9901 there), reached
/// through `ip netns exec ns curl`.
pub struct NsGatewayd {
    pub ns: String,
    pub child: Child,
    pub dir: PathBuf,
    stderr: PathBuf,
}

pub const ADMIN_PORT: u16 = 9901;

impl NsGatewayd {
    /// Starts `gatewayd run --config <dir>/config.yaml (written from `config`) <args>`.
    pub fn start(ns: &str, dir: &Path, config: &str, args: &[&str]) -> Self {
        Self::start_with_env(ns, dir, config, args, &[])
    }

    /// [`start`](Self::start) with `env` set for gatewayd.
    pub fn start_with_env(
        ns: &str,
        dir: &Path,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut gw = Self::spawn(ns, dir, config, args, env);
        gw.wait_healthy();
        gw
    }

    /// [`start_with_env`](Self::start_with_env) without waiting for gatewayd to be
    /// healthy: for a start that is meant to fail.
    pub fn spawn(ns: &str, dir: &Path, config: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, config).expect("write config");
        Self::spawn_with_config(ns, dir, &config_path, args, env)
    }

    pub fn start_with_config(ns: &str, dir: &Path, config_path: &Path, args: &[&str]) -> Self {
        let mut gw = Self::spawn_with_config(ns, dir, config_path, args, &[]);
        gw.wait_healthy();
        gw
    }

    fn spawn_with_config(
        ns: &str,
        dir: &Path,
        config_path: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let stderr = dir.join(format!("stderr-{n}.log"));
        let child = NetnsPair::command_in(
            ns,
            gateway_tests::gatewayd_bin().to_str().expect("utf-8 path"),
        )
        .arg("run")
        .arg("--config")
        .arg(config_path)
        .args(["--admin", &format!("127.0.0.1:{ADMIN_PORT}")])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("start gatewayd in the namespace");
        Self {
            ns: ns.to_owned(),
            child,
            dir: dir.to_owned(),
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Option<HttpResponse> {
        let url = format!("http://127.0.0.1:{ADMIN_PORT}{path}");
        let out = NetnsPair::command_in(&self.ns, "curl")
            .args(["-s", "-i", "--max-time", "5", &url])
            .output()
            .ok()?;
        parse_response(&String::from_utf8_lossy(&out.stdout)).ok()
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
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

    /// `GET /flows<query>` as JSON.
    pub fn flows(&self, query: &str) -> Vec<serde_json::Value> {
        let response = self.get(&format!("/flows{query}")).expect("GET /flows");
        assert_eq!(response.status, 200, "{}", response.body);
        serde_json::from_str(&response.body).expect("/flows is a JSON list")
    }

    /// Polls `/flows<query>` until `done` holds (up to [`FLOWS_WAIT`]); the last answer.
    /// Packets reach the flow table a moment after they were sent: a test polls until
    /// the counts it expects are reached, then asserts them exactly.
    pub fn wait_flows(
        &self,
        query: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + FLOWS_WAIT;
        loop {
            let flows = self.flows(query);
            if done(&flows) || Instant::now() > deadline {
                return flows;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `/flows<query>` once it is not empty and has not changed for 200 ms (up to
    /// [`FLOWS_WAIT`]): the traffic of an exchange that just ended has all been counted.
    pub fn settled_flows(&self, query: &str) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + FLOWS_WAIT;
        let mut last = self.flows(query);
        let mut since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let flows = self.flows(query);
            if flows != last {
                last = flows;
                since = Instant::now();
            } else if !last.is_empty() && since.elapsed() >= Duration::from_millis(200) {
                return last;
            }
            if Instant::now() > deadline {
                return last;
            }
        }
    }

    /// Every sample of `/metrics`, by name with labels as printed.
    pub fn metrics(&self) -> Metrics {
        let body = self.get("/metrics").expect("GET /metrics").body;
        Metrics::parse(&body)
    }

    /// Polls `/metrics` until `done` holds (up to `timeout`); the last metrics.
    pub fn wait_metrics(&self, timeout: Duration, done: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + timeout;
        loop {
            let metrics = self.metrics();
            if done(&metrics) || Instant::now() > deadline {
                return metrics;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait for the exit (which detaches the programs).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gatewayd did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGHUP.
    pub fn hangup(&self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    }
}

impl Drop for NsGatewayd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parsed Prometheus text: `name{labels}` -> value.
#[derive(Debug)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (name, value) = l.rsplit_once(' ')?;
                    Some((name.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// The sample `series` (e.g. `gatewayd_xdp_drops_total{reason="acl"}`), 0 if absent.
    pub fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    pub fn drops(&self, reason: &str) -> u64 {
        self.get(&format!("gatewayd_xdp_drops_total{{reason=\"{reason}\"}}")) as u64
    }

    pub fn listener(&self, metric: &str, listener: &str, direction: &str) -> u64 {
        self.get(&format!(
            "gatewayd_listener_{metric}_total{{listener=\"{listener}\",protocol=\"http\",direction=\"{direction}\"}}"
        )) as u64
    }

    pub fn feature(&self, name: &str) -> Option<f64> {
        self.0
            .get(&format!("gatewayd_ebpf_feature{{feature=\"{name}\"}}"))
            .copied()
    }
}

// ---- traffic from the peer namespace ------------------------------------------------------

/// Sends each IPv4 packet (header included) from namespace `ns` through a raw socket.
/// The kernel fills in the IPv4 checksum and total length.
pub fn send_raw_v4(ns: &str, packets: Vec<Vec<u8>>) {
    NetnsPair::run_in(ns, move || {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255)))?;
        for packet in &packets {
            let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
            socket.send_to(packet, &SockAddr::from(SocketAddr::new(IpAddr::V4(dst), 0)))?;
        }
        Ok(())
    })
    .expect("send raw packets from the peer namespace");
}

/// An IPv4 TCP packet (no Ethernet header) for a raw socket.
pub fn raw_tcp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: (u16, u16),
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let l4 = tcp(src.into(), dst.into(), ports, flags, payload);
    ipv4(src.octets(), dst.octets(), IPPROTO_TCP, &l4)
}

/// An IPv4 UDP packet (no Ethernet header) for a raw socket.
pub fn raw_udp(src: Ipv4Addr, dst: Ipv4Addr, ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
    let l4 = udp(src.into(), dst.into(), ports, payload);
    ipv4(src.octets(), dst.octets(), IPPROTO_UDP, &l4)
}

fn mac_of(ns: &str, dev: &str) -> String {
    let mac = NetnsPair::mac(ns, dev).unwrap_or_else(|e| panic!("{e:#}"));
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Permanent neighbour entries on both ends of the pair: packets leave at once and no ARP
/// is ever sent, so the counters see only the test's own traffic.
pub fn static_neighbours(pair: &NetnsPair) {
    let mac_a = mac_of(&pair.a, &pair.veth_a);
    let mac_b = mac_of(&pair.b, &pair.veth_b);
    let addr_a = pair.addr_a.to_string();
    let addr_b = pair.addr_b.to_string();
    ip(&[
        "-n",
        &pair.b,
        "neigh",
        "replace",
        &addr_a,
        "lladdr",
        &mac_a,
        "dev",
        &pair.veth_b,
        "nud",
        "permanent",
    ]);
    ip(&[
        "-n",
        &pair.a,
        "neigh",
        "replace",
        &addr_b,
        "lladdr",
        &mac_b,
        "dev",
        &pair.veth_a,
        "nud",
        "permanent",
    ]);
}

/// Turns IPv6 on for the pair (off by default, see [`NetnsPair`]): `fd00:18:N::1/64` on
/// `veth_a` and `fd00:18:N::2/64` on `veth_b` (N from the pair's IPv4 subnet), without
/// duplicate address detection (`nodad`) so both are usable at once, and permanent
/// neighbour entries so no neighbour discovery precedes the tests' packets. Returns the
/// two addresses.
pub fn enable_ipv6(pair: &NetnsPair) -> (Ipv6Addr, Ipv6Addr) {
    let n = u16::from(pair.addr_a.octets()[2]);
    let addr_a = Ipv6Addr::new(0xfd00, 0x18, n, 0, 0, 0, 0, 1);
    let addr_b = Ipv6Addr::new(0xfd00, 0x18, n, 0, 0, 0, 0, 2);
    for (ns, veth, addr) in [
        (&pair.a, &pair.veth_a, addr_a),
        (&pair.b, &pair.veth_b, addr_b),
    ] {
        gateway_tests::run_ok(
            NetnsPair::command_in(ns, "sysctl")
                .args(["-qw", &format!("net.ipv6.conf.{veth}.disable_ipv6=0")]),
        )
        .expect("enable IPv6");
        ip(&[
            "-n",
            ns,
            "-6",
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            veth,
            "nodad",
        ]);
    }
    let mac_a = mac_of(&pair.a, &pair.veth_a);
    let mac_b = mac_of(&pair.b, &pair.veth_b);
    for (ns, neighbour, mac, veth) in [
        (&pair.b, addr_a, &mac_a, &pair.veth_b),
        (&pair.a, addr_b, &mac_b, &pair.veth_a),
    ] {
        ip(&[
            "-n",
            ns,
            "-6",
            "neigh",
            "replace",
            &neighbour.to_string(),
            "lladdr",
            mac,
            "dev",
            veth,
            "nud",
            "permanent",
        ]);
    }
    (addr_a, addr_b)
}

/// Runs `ip` with `args`, failing the test on error.
pub fn ip(args: &[&str]) {
    gateway_tests::run_ok(Command::new("ip").args(args)).expect("ip command");
}

/// A bpffs mounted on a fresh temporary directory of the host, unmounted on drop. Mounts
/// made here are visible inside `ip netns exec` (its mount namespace is a copy), so pins
/// in it outlive a gatewayd process.
pub struct Bpffs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bpffs {
    pub fn mount() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bpffs");
        std::fs::create_dir(&path).expect("mount point");
        gateway_tests::run_ok(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&path))
            .expect("mount a bpffs");
        Self { path, _dir: dir }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

// ---- packet capture -----------------------------------------------------------------------

/// One TCP segment (or GSO/GRO super-packet, expanded) seen on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// Wire segments: a super-packet counts as the segments it stands for.
    pub segments: u64,
    /// L3 bytes on the wire, every segment with its headers.
    pub l3_bytes: u64,
    pub flags: u8,
}

/// An AF_PACKET capture of IPv4 TCP on every interface of a namespace (filter by address),
/// with the kernel's GSO metadata (virtio-net header) so that super-packets count as the
/// wire segments they stand for.
pub struct Capture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<Vec<Seen>>>>,
}

/// `struct virtio_net_hdr` prepended to every frame with `PACKET_VNET_HDR`.
const VNET_HDR_LEN: usize = 10;
const SOL_PACKET: i32 = 263;
const PACKET_VNET_HDR: i32 = 15;
const ETH_P_ALL: u16 = 0x0003;

#[allow(unsafe_code)]
fn enable_vnet_hdr(socket: &Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let one: i32 = 1;
    // SAFETY: a valid socket fd, and a pointer/length pair describing `one`, which lives
    // through the call.
    let rc = unsafe {
        nix::libc::setsockopt(
            socket.as_raw_fd(),
            SOL_PACKET,
            PACKET_VNET_HDR,
            (&raw const one).cast(),
            size_of::<i32>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn parse_seen(frame: &[u8]) -> Option<Seen> {
    let (vnet, eth) = frame.split_at_checked(VNET_HDR_LEN)?;
    let gso_type = vnet[1];
    let gso_size = u64::from(u16::from_le_bytes([vnet[4], vnet[5]]));
    if eth.len() < 14 + 20 || eth[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &eth[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != IPPROTO_TCP || ip.len() < ihl + 20 {
        return None;
    }
    let total = u64::from(u16::from_be_bytes([ip[2], ip[3]]));
    let tcp = &ip[ihl..];
    let headers = (ihl + usize::from(tcp[12] >> 4) * 4) as u64;
    let payload = total.saturating_sub(headers);
    let segments = if gso_type != 0 && gso_size > 0 {
        payload.div_ceil(gso_size).max(1)
    } else {
        1
    };
    Some(Seen {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        src_port: u16::from_be_bytes([tcp[0], tcp[1]]),
        dst_port: u16::from_be_bytes([tcp[2], tcp[3]]),
        segments,
        l3_bytes: total + (segments - 1) * headers,
        flags: tcp[13],
    })
}

impl Capture {
    /// Starts capturing inside namespace `ns`; returns once the socket is open.
    pub fn start(ns: &str) -> Self {
        use std::sync::{atomic::AtomicBool, atomic::Ordering, Arc};
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let path = format!("/var/run/netns/{ns}");
        let stop_flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || -> anyhow::Result<Vec<Seen>> {
            let setup = || -> anyhow::Result<Socket> {
                let file = std::fs::File::open(&path)?;
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                let socket = Socket::new(
                    Domain::PACKET,
                    Type::RAW,
                    Some(Protocol::from(i32::from(ETH_P_ALL.to_be()))),
                )?;
                enable_vnet_hdr(&socket)?;
                socket.set_recv_buffer_size(8 << 20)?;
                socket.set_read_timeout(Some(Duration::from_millis(20)))?;
                Ok(socket)
            };
            let socket = match setup() {
                Ok(socket) => {
                    let _ = ready_tx.send(Ok(()));
                    socket
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(format!("{err:#}")));
                    return Err(err);
                }
            };
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 70_000];
            // Once stopped, what is queued on the socket is still read: the capture ends
            // at the first read that finds nothing.
            let mut stopping = false;
            loop {
                stopping = stopping || stop_flag.load(Ordering::Relaxed);
                match std::io::Read::read(&mut &socket, &mut buf) {
                    Ok(n) => seen.extend(parse_seen(&buf[..n])),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if stopping {
                            break;
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(seen)
        });
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(err)) => panic!("starting the capture: {err}"),
            Err(err) => panic!("starting the capture: {err}"),
        }
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns what was seen.
    pub fn finish(mut self) -> Vec<Seen> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .expect("invariant: finish runs once")
            .join()
            .expect("capture thread")
            .expect("capture")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
