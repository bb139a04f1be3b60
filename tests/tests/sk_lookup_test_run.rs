//! `sk_lookup_steer` through `BPF_PROG_TEST_RUN` (Linux 5.14+): a crafted lookup context
//! in, the verdict and the cookie of the socket the program assigned out. Covers the
//! prefix and port match, the longest prefix, IPv6, other protocols, and a steered prefix
//! whose socket is missing. (`sk_reuseport` has no test run in the kernel; the netns
//! tests drive it through real sockets.)
//!
//! aya 0.14 has no `TestRun` for `SkLookup`, so the syscall is made here.

#[macro_use]
mod support;

use std::{
    net::{Ipv4Addr, Ipv6Addr, TcpListener},
    os::fd::AsFd as _,
};

use aya::{
    maps::{lpm_trie::Key, LpmTrie, MapData, PerCpuArray, SockMap},
    programs::SkLookup,
    Ebpf,
};
use gateway_common::{
    steer_v4, steer_v6, IPPROTO_TCP, IPPROTO_UDP, MAP_SOCKETS, MAP_SOCKET_STATS, MAP_STEER_V4,
    MAP_STEER_V6, PROG_SK_LOOKUP_STEER, SOCKET_STEERED, SOCKET_STEER_MISSED, STEER_PORT_BITS,
};
use gateway_tests::bpf::{sk_lookup_test_run, SkLookupCtx};

const SK_PASS: u32 = 1;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

struct Loaded {
    ebpf: Ebpf,
}

impl Loaded {
    fn new() -> Self {
        let mut ebpf =
            Ebpf::load(gateway_userspace::ebpf::object()).expect("load the embedded eBPF object");
        let program: &mut SkLookup = ebpf
            .program_mut(PROG_SK_LOOKUP_STEER)
            .expect("program sk_lookup_steer")
            .try_into()
            .expect("an sk_lookup program");
        program
            .load()
            .expect("the verifier accepts sk_lookup_steer");
        Self { ebpf }
    }

    fn map(&mut self, name: &str) -> &mut aya::maps::Map {
        self.ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("map {name}"))
    }

    /// `SOCKETS[index] = socket`.
    fn socket(&mut self, index: u32, socket: &TcpListener) {
        let mut map: SockMap<&mut MapData> =
            SockMap::try_from(self.map(MAP_SOCKETS)).expect("SOCKETS is a SOCKMAP");
        map.set(index, socket, 0).expect("write SOCKETS");
    }

    fn steer_v4(&mut self, port: u16, addr: Ipv4Addr, len: u32, index: u32) {
        let mut map: LpmTrie<&mut MapData, [u8; 6], u32> =
            LpmTrie::try_from(self.map(MAP_STEER_V4)).expect("STEER_V4 is an LPM trie");
        map.insert(
            &Key::new(STEER_PORT_BITS + len, steer_v4(port, addr.octets())),
            index,
            0,
        )
        .expect("write STEER_V4");
    }

    fn steer_v6(&mut self, port: u16, addr: Ipv6Addr, len: u32, index: u32) {
        let mut map: LpmTrie<&mut MapData, [u8; 18], u32> =
            LpmTrie::try_from(self.map(MAP_STEER_V6)).expect("STEER_V6 is an LPM trie");
        map.insert(
            &Key::new(STEER_PORT_BITS + len, steer_v6(port, addr.octets())),
            index,
            0,
        )
        .expect("write STEER_V6");
    }

    fn socket_stat(&self, slot: u32) -> u64 {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(MAP_SOCKET_STATS).expect("SOCKET_STATS"))
                .expect("a per-CPU array");
        map.get(&slot, 0).expect("SOCKET_STATS slot").iter().sum()
    }

    /// Runs the program once on `ctx`: (verdict, cookie of the assigned socket or 0).
    fn run(&self, ctx: SkLookupCtx) -> (u32, u64) {
        let program: &SkLookup = self
            .ebpf
            .program(PROG_SK_LOOKUP_STEER)
            .expect("program")
            .try_into()
            .expect("sk_lookup");
        let run = sk_lookup_test_run(program.fd().expect("loaded").as_fd(), &ctx, 1)
            .expect("BPF_PROG_TEST_RUN");
        (run.retval, run.out.cookie)
    }
}

fn v4(protocol: u8, addr: Ipv4Addr, port: u16) -> SkLookupCtx {
    SkLookupCtx {
        family: AF_INET,
        protocol: u32::from(protocol),
        remote_ip4: u32::from_ne_bytes([198, 51, 100, 7]),
        remote_port: 40_000u16.to_be(),
        local_ip4: u32::from_ne_bytes(addr.octets()),
        local_port: u32::from(port),
        ..SkLookupCtx::default()
    }
}

fn v6(addr: Ipv6Addr, port: u16) -> SkLookupCtx {
    let o = addr.octets();
    let mut local_ip6 = [0u32; 4];
    for (i, word) in local_ip6.iter_mut().enumerate() {
        *word = u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
    }
    SkLookupCtx {
        family: AF_INET6,
        protocol: u32::from(IPPROTO_TCP),
        remote_port: 40_000u16.to_be(),
        local_ip6,
        local_port: u32::from(port),
        ..SkLookupCtx::default()
    }
}

/// A listening socket (without `SO_REUSEPORT`: the test run refuses to hand out a socket of
/// a reuseport group) and its cookie.
fn listener(addr: &str) -> (TcpListener, u64) {
    let socket = TcpListener::bind(addr).expect("listen");
    let cookie = socket2::SockRef::from(&socket).cookie().expect("SO_COOKIE");
    (socket, cookie)
}

#[test]
fn connections_to_a_steered_prefix_and_port_get_their_binds_socket_and_others_pass() {
    require_ebpf!(
        "connections_to_a_steered_prefix_and_port_get_their_binds_socket_and_others_pass"
    );
    let mut loaded = Loaded::new();
    let (range_socket, range_cookie) = listener("127.0.0.1:0");
    let (single_socket, single_cookie) = listener("127.0.0.1:0");
    loaded.socket(8, &range_socket);
    loaded.socket(12, &single_socket);
    let net = Ipv4Addr::new(192, 0, 2, 0);
    loaded.steer_v4(8080, net, 24, 8);
    loaded.steer_v4(8080, Ipv4Addr::new(192, 0, 2, 9), 32, 12);

    for (what, ctx, cookie) in [
        (
            "inside the range",
            v4(IPPROTO_TCP, Ipv4Addr::new(192, 0, 2, 77), 8080),
            range_cookie,
        ),
        (
            "the range's first address",
            v4(IPPROTO_TCP, net, 8080),
            range_cookie,
        ),
        (
            "the range's last address",
            v4(IPPROTO_TCP, Ipv4Addr::new(192, 0, 2, 255), 8080),
            range_cookie,
        ),
        (
            "a /32 inside the range: the longest prefix wins",
            v4(IPPROTO_TCP, Ipv4Addr::new(192, 0, 2, 9), 8080),
            single_cookie,
        ),
        (
            "another port",
            v4(IPPROTO_TCP, Ipv4Addr::new(192, 0, 2, 77), 8081),
            0,
        ),
        (
            "outside the range",
            v4(IPPROTO_TCP, Ipv4Addr::new(192, 0, 3, 1), 8080),
            0,
        ),
        (
            "UDP",
            v4(IPPROTO_UDP, Ipv4Addr::new(192, 0, 2, 77), 8080),
            0,
        ),
    ] {
        assert_eq!(loaded.run(ctx), (SK_PASS, cookie), "{what}");
    }
    assert_eq!(loaded.socket_stat(SOCKET_STEERED), 4);
    assert_eq!(loaded.socket_stat(SOCKET_STEER_MISSED), 0);
}

#[test]
fn ipv6_ranges_are_steered_by_prefix_too() {
    require_ebpf!("ipv6_ranges_are_steered_by_prefix_too");
    let mut loaded = Loaded::new();
    let (socket, cookie) = listener("[::1]:0");
    loaded.socket(3, &socket);
    let net: Ipv6Addr = "2001:db8:7::".parse().expect("addr");
    loaded.steer_v6(443, net, 64, 3);
    let inside: Ipv6Addr = "2001:db8:7::abcd:1".parse().expect("addr");
    let outside: Ipv6Addr = "2001:db8:8::1".parse().expect("addr");
    assert_eq!(loaded.run(v6(inside, 443)), (SK_PASS, cookie));
    assert_eq!(loaded.run(v6(outside, 443)), (SK_PASS, 0));
    assert_eq!(loaded.run(v6(inside, 80)), (SK_PASS, 0));
    // An IPv4 lookup never matches an IPv6 prefix.
    assert_eq!(
        loaded.run(v4(IPPROTO_TCP, Ipv4Addr::new(32, 1, 13, 184), 443)),
        (SK_PASS, 0)
    );
}

#[test]
fn a_steered_prefix_whose_socket_is_missing_passes_to_the_kernels_lookup_and_is_counted() {
    require_ebpf!(
        "a_steered_prefix_whose_socket_is_missing_passes_to_the_kernels_lookup_and_is_counted"
    );
    let mut loaded = Loaded::new();
    loaded.steer_v4(8080, Ipv4Addr::new(192, 0, 2, 0), 24, 5);
    let ctx = v4(IPPROTO_TCP, Ipv4Addr::new(192, 0, 2, 77), 8080);
    assert_eq!(loaded.run(ctx), (SK_PASS, 0));
    // A socket that closes leaves the SOCKMAP by itself.
    let (socket, cookie) = listener("127.0.0.1:0");
    loaded.socket(5, &socket);
    assert_eq!(loaded.run(ctx), (SK_PASS, cookie));
    drop(socket);
    assert_eq!(loaded.run(ctx), (SK_PASS, 0));
    assert_eq!(loaded.socket_stat(SOCKET_STEER_MISSED), 2);
    assert_eq!(loaded.socket_stat(SOCKET_STEERED), 1);
}
