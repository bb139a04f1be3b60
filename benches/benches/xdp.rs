//! eBPF dataplane: nanoseconds per packet of `xdp_flow` and `tc_reply` on each
//! path, measured by the kernel (`BPF_PROG_TEST_RUN`, 1,000,000 repeats per sample: the
//! kernel reports the average per run); the programs' sizes in instructions; and packets
//! per second dropped by `xdp_flow` on a veth, from a generator in the peer namespace.
//!
//! Needs root (BPF, network namespaces); prints why and does nothing otherwise.

#![allow(unsafe_code)] // AF_PACKET and sendmmsg for the packet generator

use std::{
    hint::black_box,
    sync::Mutex,
    time::{Duration, Instant},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};
use criterion::{criterion_group, criterion_main, Criterion};
use gateway_common::{
    AddrKey, DataplaneConfig, DropReason, ListenerKey, ListenerValue, CONFIG_ACL_V4,
    CONFIG_DROP_UNLISTED, CONFIG_SYN_GUARD, FAMILY_IPV4, IPPROTO_TCP, IPPROTO_UDP, MAP_ACL_V4,
    MAP_CONFIG, MAP_DROPS, MAP_GATEWAY_ADDRS, MAP_LISTENERS, MAP_LISTENER_PORTS, PROG_TC_REPLY,
    PROG_XDP_FLOW,
};
use gateway_tests::{
    is_root,
    netns::{enter, NetnsPair},
};

/// Runs per `BPF_PROG_TEST_RUN` call.
const REPEAT: u32 = 1_000_000;
/// How long the veth generator sends.
const FLOOD_FOR: Duration = Duration::from_secs(3);

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

// ---- frames -----------------------------------------------------------------------------

const CLIENT: [u8; 4] = [192, 0, 2, 10];
const GATEWAY: [u8; 4] = [198, 51, 100, 20];

fn frame(
    src: [u8; 4],
    dst: [u8; 4],
    protocol: u8,
    ports: (u16, u16),
    flags: u8,
    payload: usize,
) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
    let l4_len = if protocol == IPPROTO_TCP { 20 } else { 8 } + payload;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, protocol, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&ports.0.to_be_bytes());
    f.extend_from_slice(&ports.1.to_be_bytes());
    if protocol == IPPROTO_TCP {
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    }
    f.resize(f.len() + payload, 0x5a);
    f
}

fn tcp(src: [u8; 4], dst: [u8; 4], ports: (u16, u16), flags: u8) -> Vec<u8> {
    frame(src, dst, IPPROTO_TCP, ports, flags, 0)
}

fn listener_key(addr: [u8; 4], port: u16) -> ListenerKey {
    let mut key = ListenerKey {
        port,
        protocol: IPPROTO_TCP,
        family: FAMILY_IPV4,
        ..ListenerKey::default()
    };
    key.addr[..4].copy_from_slice(&addr);
    key
}

fn addr_key(addr: [u8; 4]) -> AddrKey {
    let mut key = AddrKey {
        family: FAMILY_IPV4,
        ..AddrKey::default()
    };
    key.addr[..4].copy_from_slice(&addr);
    key
}

// ---- the object -------------------------------------------------------------------------

struct Loaded {
    ebpf: Ebpf,
}

impl Loaded {
    fn new() -> Self {
        let mut ebpf =
            Ebpf::load(gateway_userspace::ebpf::object()).expect("load the embedded eBPF object");
        let xdp: &mut Xdp = ebpf
            .program_mut(PROG_XDP_FLOW)
            .expect("xdp_flow")
            .try_into()
            .expect("XDP program");
        xdp.load().expect("verifier accepts xdp_flow");
        let tc: &mut SchedClassifier = ebpf
            .program_mut(PROG_TC_REPLY)
            .expect("tc_reply")
            .try_into()
            .expect("classifier");
        tc.load().expect("verifier accepts tc_reply");
        Self { ebpf }
    }

    fn xdp(&self) -> &Xdp {
        self.ebpf
            .program(PROG_XDP_FLOW)
            .expect("xdp_flow")
            .try_into()
            .expect("XDP program")
    }

    fn tc(&self) -> &SchedClassifier {
        self.ebpf
            .program(PROG_TC_REPLY)
            .expect("tc_reply")
            .try_into()
            .expect("classifier")
    }

    fn config(&mut self, config: DataplaneConfig) {
        let mut map: Array<&mut MapData, DataplaneConfig> =
            Array::try_from(self.ebpf.map_mut(MAP_CONFIG).expect("CONFIG")).expect("array");
        map.set(0, config, 0).expect("write CONFIG");
    }

    fn listener(&mut self, key: ListenerKey, id: u32) {
        let mut ports: Array<&mut MapData, u64> = Array::try_from(
            self.ebpf
                .map_mut(MAP_LISTENER_PORTS)
                .expect("LISTENER_PORTS"),
        )
        .expect("array");
        let word = u32::from(key.port >> 6);
        let bits = ports.get(&word, 0).expect("read LISTENER_PORTS");
        ports
            .set(word, bits | 1 << (key.port & 63), 0)
            .expect("write LISTENER_PORTS");
        let mut map: HashMap<&mut MapData, ListenerKey, ListenerValue> =
            HashMap::try_from(self.ebpf.map_mut(MAP_LISTENERS).expect("LISTENERS")).expect("hash");
        map.insert(key, ListenerValue { id, flags: 0 }, 0)
            .expect("write LISTENERS");
    }

    fn gateway_addr(&mut self, addr: [u8; 4]) {
        let mut map: HashMap<&mut MapData, AddrKey, u32> =
            HashMap::try_from(self.ebpf.map_mut(MAP_GATEWAY_ADDRS).expect("GATEWAY_ADDRS"))
                .expect("hash");
        map.insert(addr_key(addr), 1, 0)
            .expect("write GATEWAY_ADDRS");
    }

    fn deny(&mut self, addr: [u8; 4], len: u32) {
        let mut map: LpmTrie<&mut MapData, [u8; 4], u32> =
            LpmTrie::try_from(self.ebpf.map_mut(MAP_ACL_V4).expect("ACL_V4")).expect("trie");
        map.insert(&Key::new(len, addr), 1, 0)
            .expect("write ACL_V4");
    }

    fn drops(&self, reason: DropReason) -> u64 {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(MAP_DROPS).expect("DROPS")).expect("array");
        map.get(&(reason as u32), 0).expect("DROPS").iter().sum()
    }
}

/// Which program a path runs.
#[derive(Clone, Copy)]
enum Hook {
    Xdp,
    Tc,
}

struct Path {
    name: &'static str,
    hook: Hook,
    frame: Vec<u8>,
    expect: u32,
    loaded: Loaded,
}

impl Path {
    /// One `BPF_PROG_TEST_RUN` of `REPEAT` runs: the kernel's average per run.
    fn run(&self) -> Duration {
        let opts = TestRunOptions {
            data_in: Some(&self.frame),
            repeat: REPEAT,
            ..TestRunOptions::default()
        };
        let result = match self.hook {
            Hook::Xdp => self.loaded.xdp().test_run(opts),
            Hook::Tc => self.loaded.tc().test_run(opts),
        }
        .expect("BPF_PROG_TEST_RUN");
        assert_eq!(result.return_value, self.expect, "{}", self.name);
        result.duration
    }
}

fn paths() -> Vec<Path> {
    let filters_off = DataplaneConfig::default();
    let unlisted = DataplaneConfig {
        flags: CONFIG_DROP_UNLISTED,
        ephemeral_low: 32768,
        ephemeral_high: 60999,
        ..DataplaneConfig::default()
    };
    let segment = tcp(CLIENT, GATEWAY, (40000, 443), 0x10);
    let mut out = Vec::new();

    // Pass: a frame that is not IP (parse and STATS only).
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.resize(14 + 28, 0);
    out.push(Path {
        name: "xdp_pass_non_ip",
        hook: Hook::Xdp,
        frame: arp,
        expect: XDP_PASS,
        loaded: Loaded::new(),
    });

    // The same non-IP frame through tc_reply: the floor of an skb test run.
    let mut arp_tc = vec![0xff; 6];
    arp_tc.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp_tc.resize(14 + 28, 0);
    out.push(Path {
        name: "tc_pass_non_ip",
        hook: Hook::Tc,
        frame: arp_tc,
        expect: 0,
        loaded: Loaded::new(),
    });

    // Flow update: a TCP segment of an existing flow, every filter off.
    out.push(Path {
        name: "xdp_flow_update",
        hook: Hook::Xdp,
        frame: segment.clone(),
        expect: XDP_PASS,
        loaded: Loaded::new(),
    });

    // Flow update with every filter on and passed: ACL miss, listener hit, not a SYN.
    let mut all = Loaded::new();
    all.config(DataplaneConfig {
        flags: CONFIG_ACL_V4 | CONFIG_DROP_UNLISTED | CONFIG_SYN_GUARD,
        syn_interval_ns: 1_000_000,
        syn_tolerance_ns: 0,
        ..unlisted
    });
    all.deny([203, 0, 113, 0], 24);
    all.gateway_addr(GATEWAY);
    all.listener(listener_key(GATEWAY, 443), 0);
    out.push(Path {
        name: "xdp_flow_update_all_filters_on",
        hook: Hook::Xdp,
        frame: segment.clone(),
        expect: XDP_PASS,
        loaded: all,
    });

    // The reply on egress, counted on the reverse side of the flow.
    let reply = Loaded::new();
    {
        let result = reply
            .xdp()
            .test_run(TestRunOptions {
                data_in: Some(&segment),
                ..TestRunOptions::default()
            })
            .expect("prime the flow");
        assert_eq!(result.return_value, XDP_PASS);
    }
    out.push(Path {
        name: "tc_reply_update",
        hook: Hook::Tc,
        frame: tcp(GATEWAY, CLIENT, (443, 40000), 0x10),
        expect: 0,
        loaded: reply,
    });

    // Drops, one per reason.
    let mut acl = Loaded::new();
    acl.config(DataplaneConfig {
        flags: CONFIG_ACL_V4,
        ..filters_off
    });
    acl.deny([192, 0, 2, 0], 24);
    out.push(Path {
        name: "xdp_drop_acl",
        hook: Hook::Xdp,
        frame: segment.clone(),
        expect: XDP_DROP,
        loaded: acl,
    });

    let mut unl = Loaded::new();
    unl.config(unlisted);
    unl.gateway_addr(GATEWAY);
    out.push(Path {
        name: "xdp_drop_unlisted",
        hook: Hook::Xdp,
        frame: frame(CLIENT, GATEWAY, IPPROTO_UDP, (5000, 9999), 0, 18),
        expect: XDP_DROP,
        loaded: unl,
    });

    let mut syn = Loaded::new();
    syn.config(DataplaneConfig {
        flags: CONFIG_SYN_GUARD,
        syn_interval_ns: 1_000_000_000,
        syn_tolerance_ns: 0,
        ..filters_off
    });
    let syn_frame = tcp(CLIENT, GATEWAY, (40000, 443), 0x02);
    {
        // The first SYN takes the only token; every later one is a drop.
        let result = syn
            .xdp()
            .test_run(TestRunOptions {
                data_in: Some(&syn_frame),
                ..TestRunOptions::default()
            })
            .expect("first SYN");
        assert_eq!(result.return_value, XDP_PASS);
    }
    out.push(Path {
        name: "xdp_drop_syn_flood",
        hook: Hook::Xdp,
        frame: syn_frame,
        expect: XDP_DROP,
        loaded: syn,
    });
    out
}

fn program_sizes() {
    let loaded = Loaded::new();
    for (name, info) in [
        (PROG_XDP_FLOW, loaded.xdp().info()),
        (PROG_TC_REPLY, loaded.tc().info()),
    ] {
        match info {
            Ok(info) => eprintln!(
                "{name}: {} instructions after load ({} verified, {} bytes JITed)",
                info.size_translated().map_or(0, |b| b / 8),
                info.verified_instruction_count().unwrap_or(0),
                info.size_jitted(),
            ),
            Err(err) => eprintln!("{name}: program info unavailable: {err}"),
        }
    }
}

fn test_run_benches(c: &mut Criterion) {
    if !is_root() {
        eprintln!("SKIPPED xdp benches: BPF_PROG_TEST_RUN and network namespaces need root");
        return;
    }
    program_sizes();
    let results: Mutex<Vec<(&'static str, Vec<Duration>)>> = Mutex::new(Vec::new());
    let mut group = c.benchmark_group("ebpf_test_run");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for path in paths() {
        let mut samples = Vec::new();
        group.bench_function(path.name, |b| {
            // Each sample is one BPF_PROG_TEST_RUN of REPEAT runs; the kernel's average
            // stands for every iteration criterion asks for.
            b.iter_custom(|iters| {
                let per_run = path.run();
                samples.push(per_run);
                per_run * u32::try_from(iters).unwrap_or(u32::MAX)
            });
        });
        results
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((path.name, samples));
    }
    group.finish();

    eprintln!("\nBPF_PROG_TEST_RUN, {REPEAT} runs per sample, ns per packet:");
    eprintln!(
        "{:<34} {:>8} {:>8} {:>8}",
        "path", "min", "median", "samples"
    );
    for (name, mut samples) in results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        samples.sort();
        if samples.is_empty() {
            continue;
        }
        eprintln!(
            "{name:<34} {:>8} {:>8} {:>8}",
            samples[0].as_nanos(),
            samples[samples.len() / 2].as_nanos(),
            samples.len()
        );
    }
}

// ---- packets dropped on a veth ------------------------------------------------------------

/// Sends `frame` on `dev` (in the calling thread's namespace) as fast as one thread can,
/// in batches of 256 (sendmmsg), for `duration`. Returns the frames sent.
fn flood(dev: &str, frame: &[u8], duration: Duration) -> u64 {
    const BATCH: usize = 256;
    let c_dev = std::ffi::CString::new(dev).expect("device name");
    // SAFETY: plain socket(2)/if_nametoindex(3) calls with valid arguments.
    let (fd, index) = unsafe {
        (
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0),
            libc::if_nametoindex(c_dev.as_ptr()),
        )
    };
    assert!(fd >= 0 && index > 0, "AF_PACKET socket on {dev}");
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid before the fields are set.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = 0x0800u16.to_be();
    addr.sll_ifindex = index as i32;
    let one: i32 = 1;
    // SAFETY: `addr` and `one` are valid for the sizes given and outlive the calls.
    unsafe {
        let rc = libc::bind(
            fd,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        // Skip the qdisc layer, as packet generators do.
        libc::setsockopt(fd, libc::SOL_PACKET, 20, (&raw const one).cast(), 4);
    }
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr().cast_mut().cast(),
        iov_len: frame.len(),
    };
    // SAFETY: mmsghdr is plain old data; all-zero is valid before the fields are set.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for msg in &mut msgs {
        msg.msg_hdr.msg_iov = &raw mut iov;
        msg.msg_hdr.msg_iovlen = 1;
    }
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < duration {
        // SAFETY: `msgs` holds BATCH headers, each pointing at `iov`, which points at
        // `frame`; all outlive the call, and the kernel only reads them.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        }
    }
    // SAFETY: closing the fd opened above, once.
    unsafe { libc::close(fd) };
    sent
}

fn veth_drop_rate() {
    let pair = NetnsPair::new("xdpb").expect("a veth pair between two namespaces");
    let mac_a = NetnsPair::mac(&pair.a, &pair.veth_a).expect("MAC of veth a");
    let mac_b = NetnsPair::mac(&pair.b, &pair.veth_b).expect("MAC of veth b");
    let (addr_a, addr_b) = (pair.addr_a.octets(), pair.addr_b.octets());
    let mut loaded = Loaded::new();
    loaded.config(DataplaneConfig {
        flags: CONFIG_ACL_V4,
        ..DataplaneConfig::default()
    });
    loaded.deny(addr_b, 32);
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&pair.a).expect("into namespace a");
            let xdp: &mut Xdp = loaded
                .ebpf
                .program_mut(PROG_XDP_FLOW)
                .expect("xdp_flow")
                .try_into()
                .expect("XDP program");
            xdp.attach(&pair.veth_a, XdpMode::Driver)
                .expect("attach xdp_flow to the veth (native)");
        });
    });

    // 64-byte frames (60 + FCS): UDP b -> a, denied by the ACL.
    let mut frame = Vec::with_capacity(60);
    frame.extend_from_slice(&mac_a);
    frame.extend_from_slice(&mac_b);
    frame.extend_from_slice(&frame_ip_udp(addr_b, addr_a));
    frame.resize(60, 0);

    // One sender per CPU: veth runs the receiver's NAPI (and so xdp_flow) on the sender's
    // CPU, so this measures send + drop together.
    let senders = std::thread::available_parallelism().map_or(1, usize::from);
    let before = loaded.drops(DropReason::Acl);
    let started = Instant::now();
    let sent: u64 = std::thread::scope(|s| {
        let threads: Vec<_> = (0..senders)
            .map(|_| {
                s.spawn(|| {
                    enter(&pair.b).expect("into namespace b");
                    flood(&pair.veth_b, &frame, FLOOD_FOR)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("generator thread"))
            .sum()
    });
    // Let NAPI drain what is queued.
    std::thread::sleep(Duration::from_millis(200));
    let elapsed = started.elapsed().saturating_sub(Duration::from_millis(200));
    let dropped = loaded.drops(DropReason::Acl) - before;
    let secs = elapsed.as_secs_f64();
    eprintln!(
        "\nveth flood, 64-byte frames, {:.1} s, {senders} sender threads: generator sent {:.2} Mpps, xdp_flow dropped {:.2} Mpps (ACL), {} of {} frames",
        secs,
        sent as f64 / secs / 1e6,
        dropped as f64 / secs / 1e6,
        dropped,
        sent
    );
    drop(loaded);
    drop(pair);
}

/// The Ethernet type, IPv4 and UDP headers (8 payload bytes) after the MAC addresses.
fn frame_ip_udp(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let full = frame(src, dst, IPPROTO_UDP, (5000, 9), 0, 8);
    full[12..].to_vec()
}

fn veth_benches(_c: &mut Criterion) {
    if !is_root() {
        eprintln!("SKIPPED veth drop rate: network namespaces need root");
        return;
    }
    veth_drop_rate();
    black_box(());
}

criterion_group!(benches, test_run_benches, veth_benches);
criterion_main!(benches);
