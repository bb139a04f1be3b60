//! `xdp_flow`'s filters run by the kernel on crafted frames (`BPF_PROG_TEST_RUN`): every
//! drop reason with its exact `DROPS` counter, what each filter lets through, and the
//! per-listener counters. The maps are written here as gatewayd's sync task writes them.

#[macro_use]
mod support;

use gateway_common::{
    DataplaneConfig, CONFIG_ACL_V4, CONFIG_ACL_V6, CONFIG_DROP_UNLISTED, CONFIG_RANGES,
    CONFIG_SYN_GUARD, IPPROTO_TCP, IPPROTO_UDP,
};
use support::*;

/// Drop-unlisted on, the Linux default ephemeral range.
fn unlisted_config() -> DataplaneConfig {
    DataplaneConfig {
        flags: CONFIG_DROP_UNLISTED,
        ephemeral_low: 32768,
        ephemeral_high: 60999,
        ..DataplaneConfig::default()
    }
}

/// The SYN guard on: `per_sec` SYNs per second, `burst` at once.
fn syn_config(per_sec: u64, burst: u64) -> DataplaneConfig {
    let interval = 1_000_000_000 / per_sec;
    DataplaneConfig {
        flags: CONFIG_SYN_GUARD,
        syn_interval_ns: interval,
        syn_tolerance_ns: interval * (burst - 1),
        ..DataplaneConfig::default()
    }
}

#[test]
fn a_source_in_a_denied_ipv4_prefix_is_dropped_counted_as_acl_and_makes_no_flow() {
    require_ebpf!("a_source_in_a_denied_ipv4_prefix_is_dropped_counted_as_acl_and_makes_no_flow");
    let mut prog = Loaded::new();
    prog.deny_v4([192, 0, 2, 0], 24);
    prog.set_config(DataplaneConfig {
        flags: CONFIG_ACL_V4,
        ..DataplaneConfig::default()
    });
    let denied = v4_tcp(V4_A, V4_B, (40000, 443), SYN, &[]);
    let allowed = v4_tcp(V4_C, V4_B, (40000, 443), SYN, &[]);
    assert_eq!(prog.run_xdp(&denied), XDP_DROP);
    assert_eq!(prog.run_xdp(&denied), XDP_DROP);
    assert_eq!(prog.run_xdp(&allowed), XDP_PASS);
    assert_eq!(prog.drops(), [2, 0, 0]);
    let flows = prog.flows();
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert_eq!(flows[0].0, v4_key(V4_C, V4_B, IPPROTO_TCP, (40000, 443)));
    assert_eq!(
        prog.stats(gateway_common::STATS_XDP).packets,
        3,
        "dropped packets are still seen"
    );
}

#[test]
fn a_source_in_a_denied_ipv6_prefix_is_dropped_and_the_longest_prefix_does_not_matter() {
    require_ebpf!(
        "a_source_in_a_denied_ipv6_prefix_is_dropped_and_the_longest_prefix_does_not_matter"
    );
    let mut prog = Loaded::new();
    // 2001:db8::/32 and a more specific /64 inside it: any match denies.
    prog.deny_v6(
        [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        32,
    );
    prog.deny_v6(
        [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        64,
    );
    prog.set_config(DataplaneConfig {
        flags: CONFIG_ACL_V6,
        ..DataplaneConfig::default()
    });
    assert_eq!(
        prog.run_xdp(&v6_tcp(V6_A, V6_OTHER, (1000, 443), SYN, &[])),
        XDP_DROP
    );
    assert_eq!(
        prog.run_xdp(&v6_tcp(V6_OTHER, V6_A, (1000, 443), SYN, &[])),
        XDP_PASS,
        "only the source is checked"
    );
    assert_eq!(
        prog.run_xdp(&v4_tcp(V4_A, V4_B, (1000, 443), SYN, &[])),
        XDP_PASS,
        "IPv4 is not looked up in the IPv6 trie"
    );
    assert_eq!(prog.drops(), [1, 0, 0]);
    assert_eq!(prog.flows().len(), 2);
}

#[test]
fn acl_entries_are_not_looked_up_until_the_config_says_the_trie_is_in_use() {
    require_ebpf!("acl_entries_are_not_looked_up_until_the_config_says_the_trie_is_in_use");
    let mut prog = Loaded::new();
    prog.deny_v4(V4_A, 32);
    let frame = v4_udp(V4_A, V4_B, (5000, 53), b"q");
    assert_eq!(prog.run_xdp(&frame), XDP_PASS);
    prog.set_config(DataplaneConfig {
        flags: CONFIG_ACL_V4,
        ..DataplaneConfig::default()
    });
    assert_eq!(prog.run_xdp(&frame), XDP_DROP);
    assert_eq!(prog.drops(), [1, 0, 0]);
}

#[test]
fn tcp_and_udp_to_a_gateway_address_on_an_unlisted_port_are_dropped_as_unlisted() {
    require_ebpf!("tcp_and_udp_to_a_gateway_address_on_an_unlisted_port_are_dropped_as_unlisted");
    let mut prog = Loaded::new();
    prog.set_config(unlisted_config());
    prog.add_gateway_addr(v4_addr(V4_B));
    prog.add_listener(v4_listener(V4_B, 443), 0);
    assert_eq!(
        prog.run_xdp(&v4_tcp(V4_A, V4_B, (40000, 22), SYN, &[])),
        XDP_DROP
    );
    assert_eq!(
        prog.run_xdp(&v4_tcp(V4_A, V4_B, (40000, 8443), PSH_ACK, b"data")),
        XDP_DROP,
        "any TCP segment, not only SYNs"
    );
    assert_eq!(
        prog.run_xdp(&v4_udp(V4_A, V4_B, (5353, 53), b"q")),
        XDP_DROP
    );
    assert_eq!(prog.drops(), [0, 3, 0]);
    assert!(prog.flows().is_empty(), "{:?}", prog.flows());
    assert_eq!(prog.listener_stats(0), Default::default());
}

#[test]
fn listener_ports_ephemeral_ports_other_addresses_and_icmp_pass_the_unlisted_rule() {
    require_ebpf!("listener_ports_ephemeral_ports_other_addresses_and_icmp_pass_the_unlisted_rule");
    let mut prog = Loaded::new();
    prog.set_config(unlisted_config());
    prog.add_gateway_addr(v4_addr(V4_B));
    prog.add_listener(v4_listener(V4_B, 443), 0);
    prog.add_listener(v4_listener([0, 0, 0, 0], 8080), 1);
    let cases = [
        ("exact listener", v4_tcp(V4_A, V4_B, (40000, 443), SYN, &[])),
        (
            "wildcard listener",
            v4_tcp(V4_A, V4_B, (40001, 8080), SYN, &[]),
        ),
        (
            "ephemeral port (a reply to the host's own connection)",
            v4_tcp(V4_A, V4_B, (443, 40000), SYN_ACK, &[]),
        ),
        (
            "lowest ephemeral port",
            v4_udp(V4_A, V4_B, (53, 32768), b"a"),
        ),
        (
            "highest ephemeral port",
            v4_udp(V4_A, V4_B, (53, 60999), b"a"),
        ),
        (
            "not a gateway address",
            v4_tcp(V4_A, V4_C, (40002, 22), SYN, &[]),
        ),
        ("ICMP has no port", v4_icmp(V4_A, V4_B)),
    ];
    for (what, frame) in &cases {
        assert_eq!(prog.run_xdp(frame), XDP_PASS, "{what}");
    }
    assert_eq!(
        prog.run_xdp(&v4_udp(V4_A, V4_B, (53, 61000), b"a")),
        XDP_DROP,
        "one above the ephemeral range"
    );
    assert_eq!(prog.drops(), [0, 1, 0]);
    assert_eq!(prog.flows().len(), cases.len());
}

#[test]
fn listener_counters_count_packets_and_l3_bytes_per_listener_id_and_flows_carry_the_id() {
    require_ebpf!(
        "listener_counters_count_packets_and_l3_bytes_per_listener_id_and_flows_carry_the_id"
    );
    let mut prog = Loaded::new();
    prog.add_listener(v4_listener(V4_B, 443), 7);
    prog.add_listener(v4_listener([0, 0, 0, 0], 443), 9);
    // Exact address first: 3 segments to V4_B:443 go to listener 7.
    for payload in [&[][..], &[1u8; 100][..], &[2u8; 10][..]] {
        assert_eq!(
            prog.run_xdp(&v4_tcp(V4_A, V4_B, (40000, 443), PSH_ACK, payload)),
            XDP_PASS
        );
    }
    // Another local address on port 443 falls back to the wildcard listener 9.
    assert_eq!(
        prog.run_xdp(&v4_tcp(V4_A, V4_C, (40000, 443), SYN, &[])),
        XDP_PASS
    );
    // UDP to 443 is not the TCP listener.
    assert_eq!(
        prog.run_xdp(&v4_udp(V4_A, V4_B, (40000, 443), b"x")),
        XDP_PASS
    );
    let seven = prog.listener_stats(7);
    assert_eq!((seven.rx_packets, seven.rx_bytes), (3, 40 * 3 + 110));
    assert_eq!((seven.tx_packets, seven.tx_bytes), (0, 0));
    let nine = prog.listener_stats(9);
    assert_eq!((nine.rx_packets, nine.rx_bytes), (1, 40));
    let flows = prog.flows();
    let listener_of = |dst: [u8; 4], protocol| {
        flows
            .iter()
            .find(|(k, _)| k.dst_addr[..4] == dst && k.protocol == protocol)
            .map(|(_, v)| v.listener)
    };
    assert_eq!(listener_of(V4_B, IPPROTO_TCP), Some(8), "id + 1");
    assert_eq!(listener_of(V4_C, IPPROTO_TCP), Some(10));
    assert_eq!(listener_of(V4_B, IPPROTO_UDP), Some(0), "no listener");
}

#[test]
fn syns_beyond_a_sources_burst_are_dropped_as_syn_flood_and_other_segments_pass() {
    require_ebpf!("syns_beyond_a_sources_burst_are_dropped_as_syn_flood_and_other_segments_pass");
    let mut prog = Loaded::new();
    prog.set_config(syn_config(1, 3));
    let verdicts: Vec<u32> = (0..5)
        .map(|i| prog.run_xdp(&v4_tcp(V4_A, V4_B, (40000 + i, 443), SYN, &[])))
        .collect();
    assert_eq!(
        verdicts,
        [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP],
        "a burst of 3"
    );
    assert_eq!(
        prog.run_xdp(&v4_tcp(V4_C, V4_B, (40000, 443), SYN, &[])),
        XDP_PASS,
        "another source has its own bucket"
    );
    for flags in [SYN_ACK, ACK, PSH_ACK, FIN_ACK] {
        assert_eq!(
            prog.run_xdp(&v4_tcp(V4_A, V4_B, (40000, 443), flags, b"x")),
            XDP_PASS,
            "flags {flags:#x} are not a connection attempt"
        );
    }
    assert_eq!(prog.drops(), [0, 0, 2]);
    // 3 + 1 SYN flows; the dropped SYNs made none.
    assert_eq!(prog.flows().len(), 4);
}

#[test]
fn the_syn_guard_refills_one_token_per_interval() {
    require_ebpf!("the_syn_guard_refills_one_token_per_interval");
    let mut prog = Loaded::new();
    prog.set_config(syn_config(10, 1));
    let syn = v4_tcp(V4_A, V4_B, (40000, 443), SYN, &[]);
    assert_eq!(prog.run_xdp(&syn), XDP_PASS);
    assert_eq!(
        prog.run_xdp(&syn),
        XDP_DROP,
        "burst 1: the second SYN waits 100 ms"
    );
    std::thread::sleep(std::time::Duration::from_millis(150));
    assert_eq!(prog.run_xdp(&syn), XDP_PASS, "refilled after 100 ms");
    assert_eq!(prog.drops(), [0, 0, 1]);
}

#[test]
fn a_packet_every_filter_refuses_is_counted_once_under_the_first_acl_then_unlisted_then_syn() {
    require_ebpf!(
        "a_packet_every_filter_refuses_is_counted_once_under_the_first_acl_then_unlisted_then_syn"
    );
    let mut prog = Loaded::new();
    let mut config = syn_config(1, 1);
    config.flags |= CONFIG_ACL_V4 | CONFIG_DROP_UNLISTED;
    config.ephemeral_low = 32768;
    config.ephemeral_high = 60999;
    prog.set_config(config);
    prog.deny_v4(V4_A, 32);
    prog.add_gateway_addr(v4_addr(V4_B));
    // Denied source, unlisted port, SYN: ACL.
    assert_eq!(
        prog.run_xdp(&v4_tcp(V4_A, V4_B, (40000, 22), SYN, &[])),
        XDP_DROP
    );
    // Allowed source, unlisted port, SYN: unlisted (the SYN bucket is not touched).
    assert_eq!(
        prog.run_xdp(&v4_tcp(V4_C, V4_B, (40000, 22), SYN, &[])),
        XDP_DROP
    );
    // Allowed source, listener port: SYN guard, one SYN then drop.
    prog.add_listener(v4_listener(V4_B, 443), 0);
    assert_eq!(
        prog.run_xdp(&v4_tcp(V4_C, V4_B, (40000, 443), SYN, &[])),
        XDP_PASS
    );
    assert_eq!(
        prog.run_xdp(&v4_tcp(V4_C, V4_B, (40001, 443), SYN, &[])),
        XDP_DROP
    );
    assert_eq!(prog.drops(), [1, 1, 1]);
}

#[test]
fn a_destination_inside_a_listener_range_counts_as_its_listener_and_the_range_is_the_gateways() {
    require_ebpf!(
        "a_destination_inside_a_listener_range_counts_as_its_listener_and_the_range_is_the_gateways"
    );
    const RANGE: [u8; 4] = [192, 0, 2, 0];
    const MEMBER: [u8; 4] = [192, 0, 2, 77];
    const SINGLE: [u8; 4] = [192, 0, 2, 9];
    let mut prog = Loaded::new();
    let mut config = unlisted_config();
    config.flags |= CONFIG_RANGES;
    prog.set_config(config);
    // 192.0.2.0/24:8080 is listener 3; 192.0.2.9:8080 inside it has its own listener 4;
    // the wildcard 0.0.0.0:8080 is listener 5. 2001:db8::/64:443 is listener 6.
    prog.add_listener_range(RANGE.into(), 24, 8080, 3);
    prog.add_listener(v4_listener(SINGLE, 8080), 4);
    prog.add_listener(v4_listener([0; 4], 8080), 5);
    prog.add_gateway_range(RANGE.into(), 24);
    let v6_range = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    prog.add_listener_range(v6_range.into(), 64, 443, 6);
    prog.add_gateway_range(v6_range.into(), 64);

    let to = |dst: [u8; 4], port: u16| v4_tcp(V4_C, dst, (40000, port), SYN, &[]);
    assert_eq!(prog.run_xdp(&to(MEMBER, 8080)), XDP_PASS, "the range's");
    assert_eq!(
        prog.run_xdp(&to(SINGLE, 8080)),
        XDP_PASS,
        "exact beats range"
    );
    assert_eq!(
        prog.run_xdp(&to(V4_B, 8080)),
        XDP_PASS,
        "outside: the wildcard's"
    );
    assert_eq!(
        prog.run_xdp(&v6_tcp(V6_OTHER, V6_A, (40000, 443), SYN, &[])),
        XDP_PASS
    );
    assert_eq!(
        [3, 4, 5, 6].map(|id| prog.listener_stats(id).rx_packets),
        [1, 1, 1, 1]
    );
    let syn_bytes = 40;
    assert_eq!(prog.listener_stats(3).rx_bytes, syn_bytes);
    let member_flow = prog
        .flows()
        .into_iter()
        .find(|(k, _)| k.dst_addr[..4] == MEMBER)
        .expect("a flow to the range member");
    assert_eq!(
        member_flow.1.listener,
        3 + 1,
        "the flow names the range's listener"
    );

    // Unlisted ports of the range's addresses are the gateway's: dropped. So is UDP to the
    // range's TCP port. Outside the range, an unlisted port is nobody's business.
    assert_eq!(prog.run_xdp(&to(MEMBER, 9999)), XDP_DROP);
    assert_eq!(
        prog.run_xdp(&v4_udp(V4_C, MEMBER, (5000, 8080), b"x")),
        XDP_DROP
    );
    assert_eq!(
        prog.run_xdp(&v6_tcp(V6_OTHER, V6_B, (40000, 22), SYN, &[])),
        XDP_DROP,
        "2001:db8::b is in the IPv6 range"
    );
    assert_eq!(prog.run_xdp(&to(V4_B, 9999)), XDP_PASS);
    assert_eq!(prog.drops(), [0, 3, 0]);

    // Without CONFIG_RANGES the tries are not looked up: the member is the wildcard's, and
    // its unlisted port passes.
    prog.set_config(unlisted_config());
    assert_eq!(prog.run_xdp(&to(MEMBER, 8080)), XDP_PASS);
    assert_eq!(prog.listener_stats(5).rx_packets, 2);
    assert_eq!(prog.listener_stats(3).rx_packets, 1);
    assert_eq!(prog.run_xdp(&to(MEMBER, 9999)), XDP_PASS);
    assert_eq!(prog.drops(), [0, 3, 0]);
}
