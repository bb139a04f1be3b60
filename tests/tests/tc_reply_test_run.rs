//! `tc_reply` (TC egress) and `xdp_flow` run by the kernel on crafted frames
//! (`BPF_PROG_TEST_RUN`): both directions of a flow land in one `FLOWS` entry, with exact
//! counters, whichever side spoke first.

#[macro_use]
mod support;

use gateway_common::{
    FlowValue, ListenerStats, Stats, FLOW_ORIGIN_EGRESS, FLOW_ORIGIN_INGRESS, IPPROTO_TCP,
    IPPROTO_UDP, STATS_TC, STATS_XDP,
};
use support::*;

#[test]
fn a_reply_on_egress_is_counted_on_the_reverse_side_of_the_ingress_flow() {
    require_ebpf!("a_reply_on_egress_is_counted_on_the_reverse_side_of_the_ingress_flow");
    let prog = Loaded::new();
    let request = v4_tcp(V4_A, V4_B, (40000, 443), PSH_ACK, &[1; 100]);
    let reply = v4_tcp(V4_B, V4_A, (443, 40000), PSH_ACK, &[2; 1000]);
    let fin = v4_tcp(V4_B, V4_A, (443, 40000), FIN_ACK, &[]);
    assert_eq!(
        prog.run_xdp(&v4_tcp(V4_A, V4_B, (40000, 443), SYN, &[])),
        XDP_PASS
    );
    assert_eq!(
        prog.run_tc(&v4_tcp(V4_B, V4_A, (443, 40000), SYN_ACK, &[]), 0),
        TC_ACT_OK
    );
    assert_eq!(prog.run_xdp(&request), XDP_PASS);
    assert_eq!(prog.run_tc(&reply, 0), TC_ACT_OK);
    assert_eq!(prog.run_tc(&fin, 0), TC_ACT_OK);

    let flows = prog.flows();
    assert_eq!(flows.len(), 1, "one entry for both directions: {flows:?}");
    let (key, value) = flows[0];
    assert_eq!(key, v4_key(V4_A, V4_B, IPPROTO_TCP, (40000, 443)));
    assert_eq!(
        FlowValue {
            first_seen_ns: 0,
            last_seen_ns: 0,
            ..value
        },
        FlowValue {
            packets: 2,
            bytes: 40 + 140,
            tcp_flags: u64::from(SYN | PSH_ACK),
            rev_packets: 3,
            rev_bytes: 40 + 1040 + 40,
            rev_tcp_flags: u64::from(SYN_ACK | PSH_ACK | FIN_ACK),
            listener: 0,
            origin: FLOW_ORIGIN_INGRESS,
            first_seen_ns: 0,
            last_seen_ns: 0,
        }
    );
    assert!(
        value.first_seen_ns > 0 && value.last_seen_ns >= value.first_seen_ns,
        "timestamps of the coarse monotonic clock"
    );
    assert_eq!(prog.stats(STATS_TC).packets, 3);
    assert_eq!(prog.stats(STATS_XDP).packets, 2);
}

#[test]
fn a_gso_packet_on_egress_counts_every_segment_with_its_repeated_headers() {
    require_ebpf!("a_gso_packet_on_egress_counts_every_segment_with_its_repeated_headers");
    let prog = Loaded::new();
    assert_eq!(
        prog.run_xdp(&v4_tcp(V4_A, V4_B, (40000, 443), SYN, &[])),
        XDP_PASS
    );
    // One 3 x 1000-byte super-packet (test frames must fit in a page): on the wire, 3
    // segments of 40 + 1000 bytes.
    let gso = v4_tcp(V4_B, V4_A, (443, 40000), PSH_ACK, &[3; 3000]);
    assert_eq!(prog.run_tc(&gso, 3), TC_ACT_OK);
    let flows = prog.flows();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].1.rev_packets, 3);
    assert_eq!(flows[0].1.rev_bytes, 3 * (40 + 1000));
}

#[test]
fn a_flow_the_host_starts_is_keyed_by_its_egress_direction_and_its_replies_count_on_ingress() {
    require_ebpf!(
        "a_flow_the_host_starts_is_keyed_by_its_egress_direction_and_its_replies_count_on_ingress"
    );
    let prog = Loaded::new();
    // The gateway connects to a backend: SYN out, SYN-ACK in, data both ways.
    assert_eq!(
        prog.run_tc(&v4_tcp(V4_B, V4_C, (50000, 8080), SYN, &[]), 0),
        TC_ACT_OK
    );
    assert_eq!(
        prog.run_xdp(&v4_tcp(V4_C, V4_B, (8080, 50000), SYN_ACK, &[])),
        XDP_PASS
    );
    assert_eq!(
        prog.run_tc(&v4_tcp(V4_B, V4_C, (50000, 8080), PSH_ACK, &[9; 60]), 0),
        TC_ACT_OK
    );
    assert_eq!(
        prog.run_xdp(&v4_tcp(V4_C, V4_B, (8080, 50000), PSH_ACK, &[8; 500])),
        XDP_PASS
    );
    let flows = prog.flows();
    assert_eq!(flows.len(), 1, "{flows:?}");
    let (key, value) = flows[0];
    assert_eq!(key, v4_key(V4_B, V4_C, IPPROTO_TCP, (50000, 8080)));
    assert_eq!(value.origin, FLOW_ORIGIN_EGRESS);
    assert_eq!((value.packets, value.bytes), (2, 40 + 100));
    assert_eq!((value.rev_packets, value.rev_bytes), (2, 40 + 540));
    assert_eq!(value.tcp_flags, u64::from(SYN | PSH_ACK));
    assert_eq!(value.rev_tcp_flags, u64::from(SYN_ACK | PSH_ACK));
}

#[test]
fn replies_of_a_listener_flow_count_as_the_listeners_tx() {
    require_ebpf!("replies_of_a_listener_flow_count_as_the_listeners_tx");
    let mut prog = Loaded::new();
    prog.add_listener(v4_listener([0, 0, 0, 0], 443), 5);
    assert_eq!(
        prog.run_xdp(&v4_tcp(V4_A, V4_B, (40000, 443), SYN, &[])),
        XDP_PASS
    );
    assert_eq!(
        prog.run_tc(&v4_tcp(V4_B, V4_A, (443, 40000), SYN_ACK, &[]), 0),
        TC_ACT_OK
    );
    assert_eq!(
        prog.run_tc(&v4_tcp(V4_B, V4_A, (443, 40000), PSH_ACK, &[0; 2800]), 2),
        TC_ACT_OK
    );
    // Egress to a port that is nobody's listener: no listener counts.
    assert_eq!(
        prog.run_tc(&v4_udp(V4_B, V4_A, (53, 5353), b"answer"), 0),
        TC_ACT_OK
    );
    assert_eq!(
        prog.listener_stats(5),
        ListenerStats {
            rx_packets: 1,
            rx_bytes: 40,
            tx_packets: 3,
            tx_bytes: 40 + 2 * (40 + 1400),
        }
    );
    let udp = prog
        .flows()
        .into_iter()
        .find(|(k, _)| k.protocol == IPPROTO_UDP)
        .expect("the UDP flow the host started");
    assert_eq!(udp.1.origin, FLOW_ORIGIN_EGRESS);
    assert_eq!(udp.1.listener, 0);
}

#[test]
fn tc_reply_never_drops_and_counts_what_it_cannot_parse() {
    require_ebpf!("tc_reply_never_drops_and_counts_what_it_cannot_parse");
    let prog = Loaded::new();
    let mut arp = ethernet(0x0806);
    arp.extend_from_slice(&[0; 28]);
    let full = v4_tcp(V4_B, V4_A, (443, 40000), SYN_ACK, &[]);
    let truncated = full[..14 + 20 + 10].to_vec();
    assert_eq!(prog.run_tc(&arp, 0), TC_ACT_OK);
    assert_eq!(prog.run_tc(&truncated, 0), TC_ACT_OK);
    assert!(prog.flows().is_empty());
    assert_eq!(
        prog.stats(STATS_TC),
        Stats {
            packets: 2,
            bytes: (arp.len() + truncated.len()) as u64,
            parse_failures: 1,
            non_ip: 1,
        }
    );
}
