//! Map keys, values and names shared by the eBPF programs (`gateway-ebpf`) and userspace
//! (`gatewayd`). Everything here is `#[repr(C)]`, `Copy` and free of padding surprises:
//! the kernel and userspace read the same bytes. `no_std`; it must not depend on anything
//! that needs an allocator or an OS.
#![no_std]

/// Name of the LRU hash map `FlowKey -> FlowValue`.
pub const MAP_FLOWS: &str = "FLOWS";
/// Name of the per-CPU array (one entry, index 0) of [`Stats`].
pub const MAP_STATS: &str = "STATS";
/// Name of the XDP flow-tracking program.
pub const PROG_XDP_FLOW: &str = "xdp_flow";

/// Capacity of `FLOWS`. Least recently used entries are evicted beyond it.
pub const FLOWS_MAX_ENTRIES: u32 = 65_536;

/// `FlowKey::family` for IPv4.
pub const FAMILY_IPV4: u8 = 4;
/// `FlowKey::family` for IPv6.
pub const FAMILY_IPV6: u8 = 6;

/// IANA protocol numbers the programs look into.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// One direction of a flow as seen on the wire.
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

/// Counters of one flow. `bytes` counts L3 bytes (the IP header and everything after it,
/// as given by the IP length fields), not the Ethernet frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub packets: u64,
    pub bytes: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the first and last packet.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Bitwise OR of the TCP flags byte of every packet of the flow (FIN=0x01 ... CWR=0x80).
    /// A `u64` so the kernel can OR into it atomically.
    pub tcp_flags: u64,
}

/// Global counters, one copy per CPU, summed by userspace.
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
}

const _: () = {
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<FlowValue>() == 40);
    assert!(core::mem::size_of::<Stats>() == 32);
};
