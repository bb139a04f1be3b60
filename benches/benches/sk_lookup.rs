//! Socket steering: what `sk_lookup_steer` and `sk_reuseport_pick` cost.
//!
//! 1. Nanoseconds per run of `sk_lookup_steer` by `BPF_PROG_TEST_RUN` (1,000,000 repeats
//!    per sample): a steered destination (trie hit, socket assigned) and a miss.
//! 2. Connections per second on loopback in a network namespace of its own, one thread
//!    doing connect + accept + close (RST, so no TIME_WAIT) in a bounded loop, rounds
//!    interleaved so drift hits every case alike:
//!    - `plain`: a socket bound on the address, no program;
//!    - `sk_lookup miss`: the same, with `sk_lookup_steer` attached to the namespace (every
//!      connection runs it and finds no prefix: what gatewayd costs connections it does
//!      not steer);
//!    - `sk_lookup steered`: one socket on 192.0.2.0 serves 192.0.2.0/24 (a Gateway range);
//!    - `reuseport x2` / `reuseport x2 + sk_reuseport_pick`: a group of two sockets on the
//!      address, without and with the worker-choosing program.
//!
//! Needs root (BPF, network namespaces); prints why and does nothing otherwise.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::fd::AsFd as _,
    process::Command,
    time::Instant,
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, SockMap},
    programs::{SkLookup, SkReuseport},
    Ebpf,
};
use gateway_common::{
    steer_v4, ListenerKey, FAMILY_IPV4, IPPROTO_TCP, MAP_REUSEPORT_GROUPS, MAP_REUSEPORT_LIVE,
    MAP_SOCKETS, MAP_STEER_V4, PROG_SK_LOOKUP_STEER, PROG_SK_REUSEPORT_PICK, STEER_PORT_BITS,
};
use gateway_tests::{
    bpf::{sk_lookup_test_run, SkLookupCtx},
    is_root,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Runs per `BPF_PROG_TEST_RUN` call.
const REPEAT: u32 = 1_000_000;
const TEST_RUN_SAMPLES: usize = 16;
/// Connections per sample, and rounds (one sample of every case per round).
const CONNECTIONS: usize = 20_000;
const ROUNDS: usize = 9;

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

/// A namespace with loopback up and 192.0.2.0/24 local to it; deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("gwbench-skl-{}", std::process::id() % 100_000);
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &name,
            "route",
            "add",
            "local",
            "192.0.2.0/24",
            "dev",
            "lo",
        ]);
        Self(name)
    }

    fn file(&self) -> std::fs::File {
        std::fs::File::open(format!("/var/run/netns/{}", self.0)).expect("open netns")
    }

    /// Moves the calling thread into the namespace.
    fn enter(&self) {
        gateway_tests::netns::enter(&self.0).expect("setns into the bench namespace");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn listener(addr: SocketAddr, reuseport: bool, freebind: bool) -> TcpListener {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    if reuseport {
        socket.set_reuse_port(true).expect("SO_REUSEPORT");
    }
    if freebind {
        socket.set_freebind_v4(true).expect("IP_FREEBIND");
    }
    socket.bind(&SockAddr::from(addr)).expect("bind");
    socket.listen(4096).expect("listen");
    socket.into()
}

/// `n` connections to `dst`, each accepted by one of `servers` and closed: connections
/// per second.
fn connection_rate(servers: &[TcpListener], dst: SocketAddr, n: usize) -> f64 {
    for s in servers {
        s.set_nonblocking(true).expect("nonblocking");
    }
    let start = Instant::now();
    for _ in 0..n {
        let client = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        client
            .set_linger(Some(std::time::Duration::ZERO))
            .expect("SO_LINGER");
        client.connect(&SockAddr::from(dst)).expect("connect");
        // On loopback the handshake is done when connect returns: one of the sockets has
        // it queued.
        let accepted = loop {
            let mut got = None;
            for s in servers {
                match s.accept() {
                    Ok((stream, _)) => {
                        got = Some(stream);
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("accept: {e}"),
                }
            }
            if let Some(stream) = got {
                break stream;
            }
        };
        drop(client);
        drop(accepted);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

// ---- BPF_PROG_TEST_RUN ------------------------------------------------------------------

/// Average ns per run of `program` on `ctx` over `REPEAT` runs, and the cookie assigned.
fn test_run(program: &SkLookup, ctx: SkLookupCtx) -> (u32, u64) {
    let run = sk_lookup_test_run(program.fd().expect("loaded").as_fd(), &ctx, REPEAT)
        .expect("BPF_PROG_TEST_RUN");
    (run.duration_ns, run.out.cookie)
}

fn lookup_ctx(addr: Ipv4Addr, port: u16) -> SkLookupCtx {
    SkLookupCtx {
        family: libc::AF_INET as u32,
        protocol: u32::from(IPPROTO_TCP),
        remote_ip4: u32::from_ne_bytes([198, 51, 100, 7]),
        remote_port: 40_000u16.to_be(),
        local_ip4: u32::from_ne_bytes(addr.octets()),
        local_port: u32::from(port),
        ..SkLookupCtx::default()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn load() -> Ebpf {
    let mut ebpf = Ebpf::load(gateway_userspace::ebpf::object()).expect("load the object");
    let program: &mut SkLookup = ebpf
        .program_mut(PROG_SK_LOOKUP_STEER)
        .expect("sk_lookup_steer")
        .try_into()
        .expect("sk_lookup");
    program.load().expect("verifier accepts sk_lookup_steer");
    let program: &mut SkReuseport = ebpf
        .program_mut(PROG_SK_REUSEPORT_PICK)
        .expect("sk_reuseport_pick")
        .try_into()
        .expect("sk_reuseport");
    program.load().expect("verifier accepts sk_reuseport_pick");
    ebpf
}

fn steer(ebpf: &mut Ebpf, port: u16, net: Ipv4Addr, len: u32, index: u32) {
    let mut map: LpmTrie<&mut MapData, [u8; 6], u32> =
        LpmTrie::try_from(ebpf.map_mut(MAP_STEER_V4).expect("STEER_V4")).expect("LPM trie");
    map.insert(
        &Key::new(STEER_PORT_BITS + len, steer_v4(port, net.octets())),
        index,
        0,
    )
    .expect("write STEER_V4");
}

fn set_socket(ebpf: &mut Ebpf, index: u32, socket: &TcpListener) {
    let mut map: SockMap<&mut MapData> =
        SockMap::try_from(ebpf.map_mut(MAP_SOCKETS).expect("SOCKETS")).expect("SOCKMAP");
    map.set(index, socket, 0).expect("write SOCKETS");
}

fn test_run_figures() {
    let mut ebpf = load();
    let server = TcpListener::bind("127.0.0.1:0").expect("listen");
    set_socket(&mut ebpf, 0, &server);
    steer(&mut ebpf, 8080, Ipv4Addr::new(192, 0, 2, 0), 24, 0);
    let program: &SkLookup = ebpf
        .program(PROG_SK_LOOKUP_STEER)
        .expect("program")
        .try_into()
        .expect("sk_lookup");
    println!("\nsk_lookup_steer, BPF_PROG_TEST_RUN ({REPEAT} runs per sample, {TEST_RUN_SAMPLES} samples), ns per run:");
    println!("{:<58} {:>6} {:>6}", "path", "min", "median");
    for (name, ctx, steered) in [
        (
            "sk_lookup_steered (trie hit, socket assigned)",
            lookup_ctx(Ipv4Addr::new(192, 0, 2, 77), 8080),
            true,
        ),
        (
            "sk_lookup_miss_port (no prefix on the port)",
            lookup_ctx(Ipv4Addr::new(192, 0, 2, 77), 8081),
            false,
        ),
        (
            "sk_lookup_miss_addr (port has a prefix, address outside)",
            lookup_ctx(Ipv4Addr::new(198, 51, 100, 1), 8080),
            false,
        ),
    ] {
        let mut samples = Vec::new();
        for _ in 0..TEST_RUN_SAMPLES {
            let (ns, cookie) = test_run(program, ctx);
            assert_eq!(cookie != 0, steered, "{name}");
            samples.push(f64::from(ns));
        }
        let min = samples.iter().copied().fold(f64::MAX, f64::min);
        println!("{name:<58} {min:>6.0} {:>6.0}", median(samples));
    }
    let info = program.info().expect("program info");
    println!(
        "sk_lookup_steer: {} instructions ({} bytes JITed)",
        info.size_translated().unwrap_or(0) / 8,
        info.size_jitted()
    );
    let program: &SkReuseport = ebpf
        .program(PROG_SK_REUSEPORT_PICK)
        .expect("program")
        .try_into()
        .expect("sk_reuseport");
    let info = program.info().expect("program info");
    println!(
        "sk_reuseport_pick: {} instructions ({} bytes JITed)",
        info.size_translated().unwrap_or(0) / 8,
        info.size_jitted()
    );
}

fn connection_figures() {
    let ns = Netns::new();
    // Every socket and connection below lives in the namespace (this thread's).
    let netns_file = ns.file();
    ns.enter();
    let mut ebpf = load();

    let plain_addr = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 9001));
    let plain = listener(plain_addr, false, false);
    let range_anchor = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 0), 9002));
    let range = listener(range_anchor, false, true);
    set_socket(&mut ebpf, 0, &range);
    steer(&mut ebpf, 9002, Ipv4Addr::new(192, 0, 2, 0), 24, 0);
    let steered_dst = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 77), 9002));

    let reuse_addr = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 2), 9003));
    let reuse = [
        listener(reuse_addr, true, false),
        listener(reuse_addr, true, false),
    ];
    let picked_addr = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 3), 9004));
    let picked = [
        listener(picked_addr, true, false),
        listener(picked_addr, true, false),
    ];
    // The worker-choosing program on the second group: both "workers" live.
    {
        let mut live: Array<&mut MapData, u32> =
            Array::try_from(ebpf.map_mut(MAP_REUSEPORT_LIVE).expect("LIVE")).expect("array");
        live.set(1, 0, 0).expect("LIVE[1]");
        live.set(2, 1, 0).expect("LIVE[2]");
        live.set(0, 2, 0).expect("LIVE[0]");
    }
    set_socket(&mut ebpf, 8, &picked[0]);
    set_socket(&mut ebpf, 9, &picked[1]);
    {
        let mut groups: HashMap<&mut MapData, ListenerKey, u32> =
            HashMap::try_from(ebpf.map_mut(MAP_REUSEPORT_GROUPS).expect("GROUPS")).expect("hash");
        let mut key = ListenerKey {
            port: picked_addr.port(),
            protocol: IPPROTO_TCP,
            family: FAMILY_IPV4,
            ..ListenerKey::default()
        };
        key.addr[..4].copy_from_slice(&[192, 0, 2, 3]);
        groups.insert(key, 8, 0).expect("GROUPS");
    }
    {
        let program: &SkReuseport = ebpf
            .program(PROG_SK_REUSEPORT_PICK)
            .expect("program")
            .try_into()
            .expect("sk_reuseport");
        program.attach(&picked[0]).expect("attach to the group");
    }

    // Warm up.
    connection_rate(std::slice::from_ref(&plain), plain_addr, 2_000);

    let cases = [
        "plain",
        "sk_lookup miss",
        "sk_lookup steered",
        "reuseport x2",
        "reuseport x2 + sk_reuseport_pick",
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        rates[0].push(connection_rate(
            std::slice::from_ref(&plain),
            plain_addr,
            CONNECTIONS,
        ));
        rates[3].push(connection_rate(&reuse, reuse_addr, CONNECTIONS));
        rates[4].push(connection_rate(&picked, picked_addr, CONNECTIONS));
        let program: &mut SkLookup = ebpf
            .program_mut(PROG_SK_LOOKUP_STEER)
            .expect("program")
            .try_into()
            .expect("sk_lookup");
        let link = program
            .attach(netns_file.try_clone().expect("netns fd"))
            .expect("attach sk_lookup");
        rates[1].push(connection_rate(
            std::slice::from_ref(&plain),
            plain_addr,
            CONNECTIONS,
        ));
        rates[2].push(connection_rate(
            std::slice::from_ref(&range),
            steered_dst,
            CONNECTIONS,
        ));
        program.detach(link).expect("detach sk_lookup");
    }
    println!(
        "\nconnections per second on loopback (connect + accept + RST close, one thread, {CONNECTIONS} per sample, {ROUNDS} rounds interleaved):"
    );
    println!(
        "{:<36} {:>10} {:>10} {:>10} {:>12}",
        "case", "min", "median", "max", "us/conn (med)"
    );
    for (name, samples) in cases.iter().zip(rates) {
        let min = samples.iter().copied().fold(f64::MAX, f64::min);
        let max = samples.iter().copied().fold(0.0, f64::max);
        let med = median(samples);
        println!(
            "{name:<36} {min:>10.0} {med:>10.0} {max:>10.0} {:>12.2}",
            1e6 / med
        );
    }
}

fn main() {
    if !is_root() {
        eprintln!("SKIPPED sk_lookup bench: BPF and network namespaces need root");
        return;
    }
    // `cargo bench -- <filter>`: run only when the filter (if any) names this bench.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !filter.is_empty() && !filter.iter().any(|f| "sk_lookup".contains(f.as_str())) {
        return;
    }
    test_run_figures();
    std::thread::spawn(connection_figures)
        .join()
        .expect("connection bench thread");
}
