//! Map keys, values and names shared by the eBPF programs (`gateway-ebpf`) and userspace
//! (`gatewayd`). Everything here is `#[repr(C)]`, `Copy` and free of padding surprises:
//! the kernel and userspace read the same bytes. `no_std`; it must not depend on anything
//! that needs an allocator or an OS.
#![no_std]

// ---- names ------------------------------------------------------------------------------

/// LRU hash `FlowKey -> FlowValue`: the flow table, both directions in one entry.
pub const MAP_FLOWS: &str = "FLOWS";
/// Per-CPU array of [`Stats`]: index [`STATS_XDP`] for `xdp_flow`, [`STATS_TC`] for `tc_reply`.
pub const MAP_STATS: &str = "STATS";
/// Per-CPU array of `u64`, one slot per [`DropReason`].
pub const MAP_DROPS: &str = "DROPS";
/// Hash `ListenerKey -> ListenerValue`: the listener table userspace writes from config.
pub const MAP_LISTENERS: &str = "LISTENERS";
/// Per-CPU array of [`ListenerStats`], indexed by `ListenerValue::id`.
pub const MAP_LISTENER_STATS: &str = "LISTENER_STATS";
/// Array of [`LISTENER_PORT_WORDS`] `u64`: bit `port % 64` of word `port / 64` is set when
/// some listener uses that port, so packets to other ports skip the `LISTENERS` lookups.
pub const MAP_LISTENER_PORTS: &str = "LISTENER_PORTS";
/// Hash `AddrKey -> u32`: the gateway's own addresses (for `--xdp-drop-unlisted`).
pub const MAP_GATEWAY_ADDRS: &str = "GATEWAY_ADDRS";
/// LPM trie of the listeners that serve a Gateway address range, [`steer_v4`] keys (the
/// port, then the range) -> [`ListenerValue`]: a destination inside a range counts as its
/// listener (an exact `LISTENERS` entry first, the wildcard last). Looked up only while
/// [`CONFIG_RANGES`] is set.
pub const MAP_LISTENER_RANGES_V4: &str = "LISTENER_RANGES_V4";
/// As [`MAP_LISTENER_RANGES_V4`], [`steer_v6`] keys.
pub const MAP_LISTENER_RANGES_V6: &str = "LISTENER_RANGES_V6";
/// LPM trie of the gateway's IPv4 address ranges (`Key<[u8; 4]> -> u32`), for
/// `--xdp-drop-unlisted` beside `GATEWAY_ADDRS`. Looked up only while [`CONFIG_RANGES`]
/// is set.
pub const MAP_GATEWAY_RANGES_V4: &str = "GATEWAY_RANGES_V4";
/// LPM trie of the gateway's IPv6 address ranges (`Key<[u8; 16]> -> u32`).
pub const MAP_GATEWAY_RANGES_V6: &str = "GATEWAY_RANGES_V6";
/// LPM trie of denied IPv4 source prefixes (`Key<[u8; 4]> -> u32`).
pub const MAP_ACL_V4: &str = "ACL_V4";
/// LPM trie of denied IPv6 source prefixes (`Key<[u8; 16]> -> u32`).
pub const MAP_ACL_V6: &str = "ACL_V6";
/// LRU hash `AddrKey -> u64`: the SYN-flood guard's per-source state (GCRA theoretical
/// arrival time, CLOCK_MONOTONIC ns).
pub const MAP_SYN_BUCKETS: &str = "SYN_BUCKETS";
/// Array with one [`DataplaneConfig`] (index 0).
pub const MAP_CONFIG: &str = "CONFIG";
/// LPM trie of steered IPv4 destinations, [`steer_v4`] keys -> the index in `SOCKETS` of
/// the bind's first socket: the port first, so a prefix of a Gateway address range
/// applies to its own port only.
pub const MAP_STEER_V4: &str = "STEER_V4";
/// LPM trie of steered IPv6 destinations, [`steer_v6`] keys -> index in `SOCKETS`.
pub const MAP_STEER_V6: &str = "STEER_V6";
/// SOCKMAP, `slot * workers + worker` -> that worker's listening socket of the bind in
/// socket slot `slot`. Both socket programs use it: `sk_lookup_steer` assigns a bind's
/// first socket, `sk_reuseport_pick` selects among the bind's row. (The kernel lets a
/// socket be in a SOCKMAP or in a REUSEPORT_SOCKARRAY, not both: both keep their entry in
/// the socket's `sk_user_data`. `bpf_sk_select_reuseport` takes a SOCKMAP since 5.8.)
pub const MAP_SOCKETS: &str = "SOCKETS";
/// Hash [`ListenerKey`] (the address and port a `SO_REUSEPORT` group is bound to) -> the
/// index of the group's first socket in `SOCKETS` (`slot * workers`).
pub const MAP_REUSEPORT_GROUPS: &str = "REUSEPORT_GROUPS";
/// Array of `u32`: index 0 holds the number of workers taking new connections, indices
/// `1..=count` their worker numbers (any order). Draining workers are not in the list.
pub const MAP_REUSEPORT_LIVE: &str = "REUSEPORT_LIVE";
/// Per-CPU array of `u64`, one slot per `SOCKET_*` event of the socket programs.
pub const MAP_SOCKET_STATS: &str = "SOCKET_STATS";

/// The XDP program: parse, filter (ACL, unlisted ports, SYN guard), count flows.
pub const PROG_XDP_FLOW: &str = "xdp_flow";
/// The TC egress program: count the reply direction in the flow's entry.
pub const PROG_TC_REPLY: &str = "tc_reply";
/// The `sk_lookup` program (attached to the network namespace): connections to a steered
/// address and port go to the listening socket of their bind.
pub const PROG_SK_LOOKUP_STEER: &str = "sk_lookup_steer";
/// The `sk_reuseport` program (attached to each bind's `SO_REUSEPORT` group): picks the
/// worker socket by flow hash among the workers that are not draining.
pub const PROG_SK_REUSEPORT_PICK: &str = "sk_reuseport_pick";

// ---- sizes ------------------------------------------------------------------------------

/// Capacity of `FLOWS`. Least recently used entries are evicted beyond it.
pub const FLOWS_MAX_ENTRIES: u32 = 65_536;
/// Capacity of `LISTENERS`, and number of `LISTENER_STATS` slots.
pub const LISTENERS_MAX_ENTRIES: u32 = 1_024;
/// Words of the `LISTENER_PORTS` bitmap (65,536 ports).
pub const LISTENER_PORT_WORDS: u32 = 1_024;
/// Capacity of `GATEWAY_ADDRS`.
pub const GATEWAY_ADDRS_MAX_ENTRIES: u32 = 4_096;
/// Capacity of each listener range trie and each gateway range trie.
pub const RANGES_MAX_ENTRIES: u32 = 1_024;
/// Capacity of each ACL trie.
pub const ACL_MAX_ENTRIES: u32 = 65_536;
/// Capacity of `SYN_BUCKETS`. Least recently used sources are forgotten beyond it.
pub const SYN_BUCKETS_MAX_ENTRIES: u32 = 65_536;

/// Socket slots: binds whose sockets are in `SOCKETS` (a row of one socket per worker)
/// and whose group is in `REUSEPORT_GROUPS`.
pub const SOCKET_SLOTS: u32 = 1_024;
/// Capacity of each steering trie (prefixes per family).
pub const STEER_PREFIXES_MAX: u32 = 16_384;
/// Workers `sk_reuseport_pick` can choose from (`REUSEPORT_LIVE` holds one more entry).
pub const REUSEPORT_WORKERS_MAX: u32 = 1_024;
/// `SOCKETS` entries in the object; userspace sets `SOCKET_SLOTS * workers` when it
/// loads it.
pub const SOCKETS_DEFAULT_ENTRIES: u32 = SOCKET_SLOTS * 4;

/// `SOCKET_STATS` slot: `sk_lookup_steer` handed a connection to a bind's socket.
pub const SOCKET_STEERED: u32 = 0;
/// `SOCKET_STATS` slot: a steered prefix matched but its slot had no socket (being
/// rebound); the kernel's own lookup went on.
pub const SOCKET_STEER_MISSED: u32 = 1;
/// `SOCKET_STATS` slot: `sk_reuseport_pick` chose a worker that takes new connections.
pub const SOCKET_PICKED: u32 = 2;
/// `SOCKET_STATS` slot: `sk_reuseport_pick` left the choice to the kernel's hash (a group
/// or a worker socket it does not know yet).
pub const SOCKET_PICK_FALLBACK: u32 = 3;
/// `SOCKET_STATS` slot: every worker is draining; the connection was refused.
pub const SOCKET_REFUSED: u32 = 4;
/// Number of `SOCKET_STATS` slots.
pub const SOCKET_STATS_SLOTS: u32 = 5;

/// `STATS` slot of `xdp_flow` (ingress).
pub const STATS_XDP: u32 = 0;
/// `STATS` slot of `tc_reply` (egress).
pub const STATS_TC: u32 = 1;
/// Number of `STATS` slots.
pub const STATS_SLOTS: u32 = 2;

// ---- protocol numbers -------------------------------------------------------------------

/// `FlowKey::family` for IPv4.
pub const FAMILY_IPV4: u8 = 4;
/// `FlowKey::family` for IPv6.
pub const FAMILY_IPV6: u8 = 6;

/// IANA protocol numbers the programs look into.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// TCP flag bits (the 14th byte of the TCP header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

// ---- flows ------------------------------------------------------------------------------

/// One direction of a flow as seen on the wire: the direction of the first packet seen.
///
/// Addresses are in network byte order; an IPv4 address fills the first 4 bytes and the
/// other 12 are zero. Ports are in host byte order (0 for protocols without ports and for
/// non-first IPv4 fragments). Padding is explicit and always zero, so the key hashes the
/// same on both sides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// The same flow seen from the other end.
    #[inline(always)]
    pub fn reversed(&self) -> Self {
        Self {
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
            protocol: self.protocol,
            family: self.family,
            _pad: [0; 2],
        }
    }
}

/// `FlowValue::origin`: the first packet came in through `xdp_flow`.
pub const FLOW_ORIGIN_INGRESS: u32 = 0;
/// `FlowValue::origin`: the first packet went out through `tc_reply`.
pub const FLOW_ORIGIN_EGRESS: u32 = 1;

/// Counters of one flow, both directions. `bytes` counts L3 bytes (the IP header and
/// everything after it, as given by the IP length fields), not the Ethernet frame.
/// "Forward" is the direction of the key; "reverse" (`rev_*`) the other one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub packets: u64,
    pub bytes: u64,
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC at tick resolution, 1-10 ms) of the
    /// first packet and of the last packet in either direction.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Bitwise OR of the TCP flags byte of every forward packet (FIN=0x01 ... CWR=0x80).
    /// A `u64` so the kernel can OR into it atomically.
    pub tcp_flags: u64,
    pub rev_packets: u64,
    pub rev_bytes: u64,
    /// As `tcp_flags`, for the reverse direction.
    pub rev_tcp_flags: u64,
    /// `ListenerValue::id + 1` of the listener the flow's destination matched; 0: none.
    pub listener: u32,
    /// [`FLOW_ORIGIN_INGRESS`] or [`FLOW_ORIGIN_EGRESS`].
    pub origin: u32,
}

/// Global counters of one program, one copy per CPU, summed by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Stats {
    /// Every packet the program saw.
    pub packets: u64,
    /// Frame bytes (from the Ethernet header to the end) of every packet.
    pub bytes: u64,
    /// Packets whose Ethernet, VLAN, IP or L4 header was truncated or malformed.
    pub parse_failures: u64,
    /// Packets whose EtherType is neither IPv4 nor IPv6 (ARP, LLDP, ...).
    pub non_ip: u64,
}

// ---- drops ------------------------------------------------------------------------------

/// Why `xdp_flow` dropped a packet: the index of its counter in `DROPS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The source address is in a denied prefix of the ACL.
    Acl = 0,
    /// TCP or UDP to one of the gateway's addresses on a port no listener serves.
    Unlisted = 1,
    /// A TCP SYN beyond the source's token bucket.
    SynFlood = 2,
}

/// Number of `DROPS` slots.
pub const DROP_REASONS: u32 = 3;

impl DropReason {
    /// Every reason, in `DROPS` index order.
    pub const ALL: [DropReason; DROP_REASONS as usize] =
        [DropReason::Acl, DropReason::Unlisted, DropReason::SynFlood];

    /// Label value in `/metrics`.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Acl => "acl",
            DropReason::Unlisted => "unlisted",
            DropReason::SynFlood => "syn_flood",
        }
    }
}

// ---- listeners --------------------------------------------------------------------------

/// A listener address as the kernel matches it: destination address, port and IP protocol.
/// An unspecified address (all zero) of a family is the wildcard of that family.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ListenerKey {
    /// Network byte order; IPv4 in the first 4 bytes, the rest zero.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// `IPPROTO_TCP` (Gateway listeners are all TCP today).
    pub protocol: u8,
    pub family: u8,
}

/// `ListenerValue::flags`: the port expects TLS first.
pub const LISTENER_TLS: u32 = 1;
/// `ListenerValue::flags >> LISTENER_PROTOCOL_SHIFT & 0xff`: the listener protocol
/// (`LISTENER_PROTO_*`).
pub const LISTENER_PROTOCOL_SHIFT: u32 = 8;
pub const LISTENER_PROTO_HTTP: u32 = 1;
pub const LISTENER_PROTO_HTTPS: u32 = 2;
pub const LISTENER_PROTO_TLS_TERMINATE: u32 = 3;
pub const LISTENER_PROTO_TLS_PASSTHROUGH: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ListenerValue {
    /// Stable slot chosen by userspace: the index into `LISTENER_STATS`
    /// (`< LISTENERS_MAX_ENTRIES`). It stays the same as long as the listener exists.
    pub id: u32,
    pub flags: u32,
}

/// Per-listener counters, one copy per CPU. `rx` is what `xdp_flow` saw towards the
/// listener, `tx` what `tc_reply` saw of the same flows going back. L3 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ListenerStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// An address alone: key of `GATEWAY_ADDRS` and `SYN_BUCKETS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct AddrKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

// ---- steering (sk_lookup) -----------------------------------------------------------------

/// Bits of a steering key before the address: the port.
pub const STEER_PORT_BITS: u32 = 16;

/// `STEER_V4` key data: the destination port (network byte order), then the address
/// (network byte order). Its prefix length is `STEER_PORT_BITS` + the address prefix.
#[inline(always)]
pub fn steer_v4(port: u16, addr: [u8; 4]) -> [u8; 6] {
    let p = port.to_be_bytes();
    [p[0], p[1], addr[0], addr[1], addr[2], addr[3]]
}

/// `STEER_V6` key data: the destination port (network byte order), then the address.
#[inline(always)]
pub fn steer_v6(port: u16, addr: [u8; 16]) -> [u8; 18] {
    let mut key = [0u8; 18];
    key[..2].copy_from_slice(&port.to_be_bytes());
    key[2..].copy_from_slice(&addr);
    key
}

// ---- configuration ----------------------------------------------------------------------

/// `DataplaneConfig::flags`: drop TCP/UDP to the gateway's addresses on unlisted ports.
pub const CONFIG_DROP_UNLISTED: u32 = 1;
/// The IPv4 ACL has entries (skips the trie lookup when clear).
pub const CONFIG_ACL_V4: u32 = 2;
/// The IPv6 ACL has entries.
pub const CONFIG_ACL_V6: u32 = 4;
/// The SYN-flood guard is on.
pub const CONFIG_SYN_GUARD: u32 = 8;
/// Some listener serves a Gateway address range: look in the range tries.
pub const CONFIG_RANGES: u32 = 16;

/// What userspace tells the programs, in `CONFIG[0]`. All zero: count only, drop nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DataplaneConfig {
    pub flags: u32,
    /// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`), inclusive:
    /// never dropped as unlisted, so replies to the host's own connections get through.
    pub ephemeral_low: u16,
    pub ephemeral_high: u16,
    /// SYN guard (GCRA): nanoseconds per token (1e9 / rate).
    pub syn_interval_ns: u64,
    /// SYN guard: how far ahead of now a source's theoretical arrival time may run,
    /// `(burst - 1) * syn_interval_ns`.
    pub syn_tolerance_ns: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: the types are #[repr(C)], Copy, contain only integers and explicit padding
    // fields, so every bit pattern is valid and no byte is uninitialised.
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::FlowValue {}
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::Stats {}
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::ListenerKey {}
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::ListenerValue {}
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::ListenerStats {}
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::AddrKey {}
    // SAFETY: as above (the u16 pair sits between a u32 and a u64 without a gap).
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::DataplaneConfig {}
}

// The layouts have no implicit padding: every byte is a field.
const _: () = {
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<FlowValue>() == 72);
    assert!(core::mem::size_of::<Stats>() == 32);
    assert!(core::mem::size_of::<ListenerKey>() == 20);
    assert!(core::mem::size_of::<ListenerValue>() == 8);
    assert!(core::mem::size_of::<ListenerStats>() == 32);
    assert!(core::mem::size_of::<AddrKey>() == 20);
    assert!(core::mem::size_of::<DataplaneConfig>() == 24);
};
