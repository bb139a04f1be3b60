//! `FLOWS` entries as `/flows` shows them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gateway_common::{FlowKey, FlowValue, FAMILY_IPV4, IPPROTO_TCP, IPPROTO_UDP};
use serde::Serialize;

/// One flow of the kernel's flow table, in the direction it was seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or the protocol number.
    pub protocol: String,
    pub src_addr: IpAddr,
    pub src_port: u16,
    pub dst_addr: IpAddr,
    pub dst_port: u16,
    pub packets: u64,
    /// L3 bytes: IP headers and payload.
    pub bytes: u64,
    /// CLOCK_MONOTONIC nanoseconds of the first and last packet.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// TCP flags seen on any packet, e.g. `["SYN", "ACK", "PSH"]`.
    pub tcp_flags: Vec<&'static str>,
}

const TCP_FLAG_NAMES: [(u64, &str); 8] = [
    (0x01, "FIN"),
    (0x02, "SYN"),
    (0x04, "RST"),
    (0x08, "PSH"),
    (0x10, "ACK"),
    (0x20, "URG"),
    (0x40, "ECE"),
    (0x80, "CWR"),
];

fn addr(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

fn protocol_name(family: u8, protocol: u8) -> String {
    match (family, protocol) {
        (_, IPPROTO_TCP) => "tcp".into(),
        (_, IPPROTO_UDP) => "udp".into(),
        (FAMILY_IPV4, 1) => "icmp".into(),
        (_, 58) => "icmpv6".into(),
        (_, other) => other.to_string(),
    }
}

impl Flow {
    pub fn new(key: &FlowKey, value: &FlowValue) -> Self {
        Self {
            family: if key.family == FAMILY_IPV4 {
                "ipv4"
            } else {
                "ipv6"
            },
            protocol: protocol_name(key.family, key.protocol),
            src_addr: addr(key.family, &key.src_addr),
            src_port: key.src_port,
            dst_addr: addr(key.family, &key.dst_addr),
            dst_port: key.dst_port,
            packets: value.packets,
            bytes: value.bytes,
            first_seen_ns: value.first_seen_ns,
            last_seen_ns: value.last_seen_ns,
            tcp_flags: TCP_FLAG_NAMES
                .iter()
                .filter(|(bit, _)| value.tcp_flags & bit != 0)
                .map(|(_, name)| *name)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_key_becomes_dotted_addresses_and_named_flags() {
        let mut key = FlowKey {
            src_port: 40000,
            dst_port: 80,
            protocol: IPPROTO_TCP,
            family: FAMILY_IPV4,
            ..FlowKey::default()
        };
        key.src_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        key.dst_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let value = FlowValue {
            packets: 3,
            bytes: 180,
            tcp_flags: 0x12,
            ..FlowValue::default()
        };
        let flow = Flow::new(&key, &value);
        assert_eq!(flow.src_addr.to_string(), "10.0.0.1");
        assert_eq!(flow.dst_addr.to_string(), "10.0.0.2");
        assert_eq!(flow.protocol, "tcp");
        assert_eq!(flow.tcp_flags, vec!["SYN", "ACK"]);
    }

    #[test]
    fn ipv6_key_keeps_all_sixteen_bytes() {
        let key = FlowKey {
            src_addr: Ipv6Addr::LOCALHOST.octets(),
            dst_addr: "fd00::2"
                .parse::<Ipv6Addr>()
                .map(|a| a.octets())
                .unwrap_or_default(),
            protocol: IPPROTO_UDP,
            family: gateway_common::FAMILY_IPV6,
            ..FlowKey::default()
        };
        let flow = Flow::new(&key, &FlowValue::default());
        assert_eq!(flow.family, "ipv6");
        assert_eq!(flow.src_addr.to_string(), "::1");
        assert_eq!(flow.dst_addr.to_string(), "fd00::2");
        assert_eq!(flow.protocol, "udp");
    }
}
