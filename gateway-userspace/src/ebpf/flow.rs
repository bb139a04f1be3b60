//! `FLOWS` entries as `/flows` shows them, and the `/flows` query (filters, top-N).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gateway_common::{
    FlowKey, FlowValue, FAMILY_IPV4, FAMILY_IPV6, FLOW_ORIGIN_EGRESS, IPPROTO_TCP, IPPROTO_UDP,
};
use serde::Serialize;

/// One flow of the kernel's flow table. `src`/`dst` are the direction of its first packet;
/// `packets`/`bytes`/`tcp_flags` count that direction and `rev_*` the replies.
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
    /// CLOCK_MONOTONIC nanoseconds (tick resolution) of the first packet and of the last
    /// packet either way.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// TCP flags seen on any packet, e.g. `["SYN", "ACK", "PSH"]`.
    pub tcp_flags: Vec<&'static str>,
    /// The reply direction (counted on egress by `tc_reply`).
    pub rev_packets: u64,
    pub rev_bytes: u64,
    pub rev_tcp_flags: Vec<&'static str>,
    /// `inbound` (first packet seen by `xdp_flow`) or `outbound` (by `tc_reply`).
    pub direction: &'static str,
    /// The listener (`addr:port`, or `192.0.2.0/24:8080` for a range) the flow's
    /// destination matched, if any.
    pub listener: Option<String>,
    /// That listener's id (its `LISTENER_STATS` slot).
    pub listener_id: Option<u32>,
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

fn flag_names(bits: u64) -> Vec<&'static str> {
    TCP_FLAG_NAMES
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| *name)
        .collect()
}

impl Flow {
    /// A flow without listener name; see [`Flow::with_listener`].
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
            tcp_flags: flag_names(value.tcp_flags),
            rev_packets: value.rev_packets,
            rev_bytes: value.rev_bytes,
            rev_tcp_flags: flag_names(value.rev_tcp_flags),
            direction: if value.origin == FLOW_ORIGIN_EGRESS {
                "outbound"
            } else {
                "inbound"
            },
            listener: None,
            listener_id: value.listener.checked_sub(1),
        }
    }

    /// Names the listener (`addr:port`, or `range:port`) of `listener_id` with `name`.
    pub fn with_listener(mut self, name: impl FnOnce(u32) -> Option<String>) -> Self {
        self.listener = self.listener_id.and_then(name);
        self
    }

    /// Bytes both ways.
    pub fn total_bytes(&self) -> u64 {
        self.bytes.saturating_add(self.rev_bytes)
    }
}

/// `GET /flows?protocol=tcp&addr=10.0.0.1&port=443&listener=0.0.0.0:443&top=10`: every
/// filter given must match; `top=N` keeps the N flows with the most bytes (both ways),
/// largest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowQuery {
    /// `tcp`, `udp`, `icmp`, `icmpv6` or a protocol number.
    pub protocol: Option<ProtocolQuery>,
    /// Either end's address.
    pub addr: Option<IpAddr>,
    /// Either end's port.
    pub port: Option<u16>,
    /// The listener, by `addr:port` (`192.0.2.0/24:8080` for a range) or by id.
    pub listener: Option<String>,
    pub top: Option<usize>,
}

/// A `/flows` query that cannot be understood: answered with 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad /flows query parameter {name}={value:?}: {reason}")]
pub struct FlowQueryError {
    pub name: String,
    pub value: String,
    pub reason: &'static str,
}

/// A `protocol=` filter: the name a matching flow has, per family (they differ only for
/// a number: 1 is `icmp` over IPv4 and plain `1` over IPv6), worked out once per query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolQuery {
    ipv4: String,
    ipv6: String,
}

impl ProtocolQuery {
    fn matches(&self, flow: &Flow) -> bool {
        let name = if flow.family == "ipv4" {
            &self.ipv4
        } else {
            &self.ipv6
        };
        flow.protocol == *name
    }
}

/// A `protocol=` value: `tcp`, `udp`, `icmp`, `icmpv6` (any case) or a number 0-255.
fn query_protocol(value: &str) -> Option<ProtocolQuery> {
    let value = value.to_ascii_lowercase();
    match value.as_str() {
        "tcp" | "udp" | "icmp" | "icmpv6" => Some(ProtocolQuery {
            ipv4: value.clone(),
            ipv6: value,
        }),
        number => number.parse().ok().map(|n| ProtocolQuery {
            ipv4: protocol_name(FAMILY_IPV4, n),
            ipv6: protocol_name(FAMILY_IPV6, n),
        }),
    }
}

/// A `listener=` value as flows name it: an id, `addr:port`, or a range's `ip/len:port`
/// (IPv6 in brackets, which may be left out), written the way `/flows` writes it.
fn query_listener(value: &str) -> Option<String> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u32>().ok().map(|id| id.to_string());
    }
    let (host, port) = value.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match host.split_once('/') {
        None => Some(std::net::SocketAddr::new(host.parse().ok()?, port).to_string()),
        Some((ip, len)) => {
            let ip: IpAddr = ip.parse().ok()?;
            let len: u8 = len.parse().ok()?;
            match ip {
                IpAddr::V4(ip) if len <= 32 => Some(format!("{ip}/{len}:{port}")),
                IpAddr::V6(ip) if len <= 128 => Some(format!("[{ip}/{len}]:{port}")),
                _ => None,
            }
        }
    }
}

impl FlowQuery {
    /// Parses the raw query string (without `?`).
    pub fn parse(query: &str) -> Result<Self, FlowQueryError> {
        let mut out = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(name);
            let value = percent_decode(value);
            let bad = |reason| FlowQueryError {
                name: name.clone(),
                value: value.clone(),
                reason,
            };
            match name.as_str() {
                "protocol" => {
                    out.protocol = Some(
                        query_protocol(&value)
                            .ok_or_else(|| bad("not tcp, udp, icmp, icmpv6 or a number 0-255"))?,
                    );
                }
                "addr" => {
                    out.addr = Some(value.parse().map_err(|_| bad("not an IP address"))?);
                }
                "port" => out.port = Some(value.parse().map_err(|_| bad("not a port"))?),
                "listener" => {
                    out.listener = Some(query_listener(&value).ok_or_else(|| {
                        bad("not a listener id or addr:port (192.0.2.0/24:80, [2001:db8::1]:443)")
                    })?);
                }
                "top" => {
                    out.top = Some(
                        value
                            .parse()
                            .map_err(|_| bad("not a non-negative integer"))?,
                    );
                }
                _ => {
                    return Err(bad(
                        "unknown parameter (known: protocol, addr, port, listener, top)",
                    ))
                }
            }
        }
        Ok(out)
    }

    fn matches(&self, flow: &Flow) -> bool {
        self.protocol.as_ref().is_none_or(|p| p.matches(flow))
            && self
                .addr
                .is_none_or(|a| flow.src_addr == a || flow.dst_addr == a)
            && self
                .port
                .is_none_or(|p| flow.src_port == p || flow.dst_port == p)
            && self.listener.as_ref().is_none_or(|l| {
                flow.listener.as_deref() == Some(l.as_str())
                    || flow.listener_id.is_some_and(|id| id.to_string() == *l)
            })
    }

    /// The flows that match, sorted by bytes both ways (largest first) and cut to `top`.
    pub fn apply(&self, flows: Vec<Flow>) -> Vec<Flow> {
        let mut out: Vec<Flow> = flows.into_iter().filter(|f| self.matches(f)).collect();
        out.sort_by(|a, b| {
            b.total_bytes()
                .cmp(&a.total_bytes())
                .then(b.last_seen_ns.cmp(&a.last_seen_ns))
        });
        if let Some(top) = self.top {
            out.truncate(top);
        }
        out
    }
}

/// `%XX` and `+` decoding of a query component; invalid escapes stay as they are.
fn percent_decode(text: &str) -> String {
    fn hex(byte: u8) -> Option<u8> {
        char::from(byte)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

    fn flow(
        protocol: u8,
        src: [u8; 4],
        dst: [u8; 4],
        ports: (u16, u16),
        bytes: (u64, u64),
    ) -> Flow {
        let mut key = FlowKey {
            src_port: ports.0,
            dst_port: ports.1,
            protocol,
            family: FAMILY_IPV4,
            ..FlowKey::default()
        };
        key.src_addr[..4].copy_from_slice(&src);
        key.dst_addr[..4].copy_from_slice(&dst);
        let value = FlowValue {
            packets: 1,
            bytes: bytes.0,
            rev_bytes: bytes.1,
            listener: if ports.1 == 443 { 4 } else { 0 },
            ..FlowValue::default()
        };
        Flow::new(&key, &value).with_listener(|id| (id == 3).then(|| "0.0.0.0:443".to_owned()))
    }

    fn sample() -> Vec<Flow> {
        vec![
            flow(
                IPPROTO_TCP,
                [10, 0, 0, 1],
                [10, 0, 0, 9],
                (40000, 443),
                (100, 5000),
            ),
            flow(
                IPPROTO_TCP,
                [10, 0, 0, 2],
                [10, 0, 0, 9],
                (40001, 80),
                (300, 300),
            ),
            flow(
                IPPROTO_UDP,
                [10, 0, 0, 3],
                [10, 0, 0, 1],
                (5353, 53),
                (50, 0),
            ),
        ]
    }

    fn ports(flows: &[Flow]) -> Vec<u16> {
        flows.iter().map(|f| f.src_port).collect()
    }

    #[test]
    fn a_reply_counted_on_egress_shows_as_the_reverse_direction() {
        let flows = sample();
        assert_eq!(flows[0].rev_bytes, 5000);
        assert_eq!(flows[0].total_bytes(), 5100);
        assert_eq!(flows[0].direction, "inbound");
        assert_eq!(flows[0].listener.as_deref(), Some("0.0.0.0:443"));
        assert_eq!(flows[0].listener_id, Some(3));
        assert_eq!(flows[1].listener_id, None);
    }

    #[test]
    fn no_filter_sorts_by_bytes_both_ways() {
        assert_eq!(
            ports(&FlowQuery::default().apply(sample())),
            [40000, 40001, 5353]
        );
    }

    #[test]
    fn each_filter_narrows_and_top_cuts() {
        let q = |s: &str| FlowQuery::parse(s).expect("valid query");
        assert_eq!(ports(&q("protocol=udp").apply(sample())), [5353]);
        assert_eq!(ports(&q("protocol=TCP&top=1").apply(sample())), [40000]);
        assert_eq!(ports(&q("addr=10.0.0.1").apply(sample())), [40000, 5353]);
        assert_eq!(ports(&q("port=80").apply(sample())), [40001]);
        assert_eq!(ports(&q("listener=0.0.0.0%3A443").apply(sample())), [40000]);
        assert_eq!(ports(&q("listener=3").apply(sample())), [40000]);
        assert_eq!(ports(&q("top=0").apply(sample())), Vec::<u16>::new());
        assert_eq!(ports(&q("addr=10.0.0.9&port=443").apply(sample())), [40000]);
        assert_eq!(ports(&q("protocol=17").apply(sample())), [5353]);
        assert_eq!(ports(&q("protocol=6&top=1").apply(sample())), [40000]);
    }

    #[test]
    fn a_protocol_number_matches_its_flows_in_either_family() {
        let mut v4 = flow(1, [10, 0, 0, 1], [10, 0, 0, 9], (7, 0), (1, 1));
        v4.src_port = 1;
        let mut v6 = v4.clone();
        v6.family = "ipv6";
        v6.protocol = protocol_name(FAMILY_IPV6, 1);
        v6.src_port = 2;
        let q = |s: &str| FlowQuery::parse(s).expect("valid query");
        let flows = || vec![v4.clone(), v6.clone()];
        let mut by_number = ports(&q("protocol=1").apply(flows()));
        by_number.sort_unstable();
        assert_eq!(by_number, [1, 2]);
        assert_eq!(ports(&q("protocol=ICMP").apply(flows())), [1]);
    }

    #[test]
    fn listener_values_are_written_as_flows_name_listeners() {
        let l = |s: &str| FlowQuery::parse(s).expect(s).listener;
        assert_eq!(l("listener=7").as_deref(), Some("7"));
        assert_eq!(l("listener=0.0.0.0:443").as_deref(), Some("0.0.0.0:443"));
        assert_eq!(
            l("listener=[2001:DB8::1]:443").as_deref(),
            Some("[2001:db8::1]:443")
        );
        assert_eq!(l("listener=::1:8080").as_deref(), Some("[::1]:8080"));
        assert_eq!(
            l("listener=192.0.2.0/24:80").as_deref(),
            Some("192.0.2.0/24:80")
        );
        assert_eq!(
            l("listener=[2001:db8::/64]:443").as_deref(),
            Some("[2001:db8::/64]:443")
        );
        assert_eq!(
            l("listener=2001:db8::/64:443").as_deref(),
            Some("[2001:db8::/64]:443")
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        for (query, name) in [
            ("addr=nope", "addr"),
            ("port=70000", "port"),
            ("top=-1", "top"),
            ("colour=red", "colour"),
            ("protocol=bogus", "protocol"),
            ("protocol=256", "protocol"),
            ("listener=nowhere", "listener"),
            ("listener=0.0.0.0", "listener"),
            ("listener=0.0.0.0:99999", "listener"),
            ("listener=10.0.0.0/33:80", "listener"),
        ] {
            let err = FlowQuery::parse(query).expect_err(query);
            assert_eq!(err.name, name);
        }
    }

    #[test]
    fn percent_escapes_decode_and_broken_ones_stay() {
        assert_eq!(percent_decode("%3A%3a1+x"), "::1 x");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%é"), "%zz%é");
    }
}
