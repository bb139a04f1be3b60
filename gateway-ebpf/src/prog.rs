//! `xdp_flow`: parse Ethernet (one optional 802.1Q/802.1ad tag), IPv4/IPv6 and TCP/UDP,
//! count the packet in `STATS` and its flow in `FLOWS`, and pass it on.

use core::{
    intrinsics::{atomic_or, atomic_xadd, AtomicOrdering},
    mem,
};

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use gateway_common::{
    FlowKey, FlowValue, Stats, FAMILY_IPV4, FAMILY_IPV6, FLOWS_MAX_ENTRIES, IPPROTO_TCP,
    IPPROTO_UDP,
};

#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(FLOWS_MAX_ENTRIES, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// IPv6 extension headers walked before giving up on finding the L4 header.
const IPV6_MAX_EXT_HEADERS: usize = 4;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// Why a packet produced no flow.
enum Skip {
    /// A header was cut short or is inconsistent (counted as a parse failure).
    Malformed,
    /// Not IPv4 or IPv6 (counted as non-IP).
    NonIp,
}

struct Parsed {
    key: FlowKey,
    l3_bytes: u64,
    tcp_flags: u64,
}

#[xdp]
pub fn xdp_flow(ctx: XdpContext) -> u32 {
    match try_xdp_flow(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

#[inline(always)]
fn try_xdp_flow(ctx: &XdpContext) -> Result<u32, u32> {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let parsed = parse(ctx);
    if let Some(stats) = STATS.get_ptr_mut(0) {
        // SAFETY: the per-CPU array slot is this CPU's own and the program is not re-entered
        // on one CPU, so nothing else writes it concurrently.
        let stats = unsafe { &mut *stats };
        stats.packets += 1;
        stats.bytes += frame_len;
        match parsed {
            Err(Skip::Malformed) => stats.parse_failures += 1,
            Err(Skip::NonIp) => stats.non_ip += 1,
            Ok(_) => {}
        }
    }
    if let Ok(parsed) = parsed {
        record(&parsed);
    }
    Ok(xdp_action::XDP_PASS)
}

/// A pointer to a `T` at `offset` bytes into the packet, or `Malformed` when the packet is
/// too short. Every packet read goes through here.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Skip> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return Err(Skip::Malformed);
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
fn load<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, Skip> {
    let ptr = ptr_at::<T>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that size_of::<T>() bytes at `ptr` lie inside the packet;
    // packet data has no alignment guarantee, hence the unaligned read.
    Ok(unsafe { core::ptr::read_unaligned(ptr) })
}

#[inline(always)]
fn load_be16(ctx: &XdpContext, offset: usize) -> Result<u16, Skip> {
    Ok(u16::from_be_bytes(load::<[u8; 2]>(ctx, offset)?))
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Parsed, Skip> {
    let mut ether_type = load_be16(ctx, 12)?;
    let mut l3 = ETH_HLEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        ether_type = load_be16(ctx, ETH_HLEN + 2)?;
        l3 += VLAN_HLEN;
    }
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(ctx, l3),
        ETH_P_IPV6 => parse_ipv6(ctx, l3),
        _ => Err(Skip::NonIp),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Result<Parsed, Skip> {
    let header: [u8; IPV4_MIN_HLEN] = load(ctx, l3)?;
    if header[0] >> 4 != 4 {
        return Err(Skip::Malformed);
    }
    let ihl = ((header[0] & 0x0f) as usize) * 4;
    if ihl < IPV4_MIN_HLEN {
        return Err(Skip::Malformed);
    }
    let total_len = u16::from_be_bytes([header[2], header[3]]) as usize;
    if total_len < ihl {
        return Err(Skip::Malformed);
    }
    let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
    let protocol = header[9];

    let mut key = FlowKey {
        protocol,
        family: FAMILY_IPV4,
        ..FlowKey::default()
    };
    key.src_addr[..4].copy_from_slice(&header[12..16]);
    key.dst_addr[..4].copy_from_slice(&header[16..20]);

    let mut tcp_flags = 0;
    // Only the first fragment carries the L4 header.
    if fragment_offset == 0 {
        tcp_flags = parse_l4(ctx, l3 + ihl, protocol, &mut key)?;
    }
    Ok(Parsed {
        key,
        l3_bytes: total_len as u64,
        tcp_flags,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize) -> Result<Parsed, Skip> {
    let header: [u8; IPV6_HLEN] = load(ctx, l3)?;
    if header[0] >> 4 != 6 {
        return Err(Skip::Malformed);
    }
    let payload_len = u16::from_be_bytes([header[4], header[5]]) as u64;
    let mut next_header = header[6];
    let mut key = FlowKey {
        family: FAMILY_IPV6,
        ..FlowKey::default()
    };
    key.src_addr.copy_from_slice(&header[8..24]);
    key.dst_addr.copy_from_slice(&header[24..40]);

    let mut l4 = l3 + IPV6_HLEN;
    let mut has_l4_header = true;
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        let ext_len = match next_header {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let ext: [u8; 2] = load(ctx, l4)?;
                next_header = ext[0];
                (ext[1] as usize + 1) * 8
            }
            IPPROTO_AH => {
                let ext: [u8; 2] = load(ctx, l4)?;
                next_header = ext[0];
                (ext[1] as usize + 2) * 4
            }
            IPPROTO_FRAGMENT => {
                let ext: [u8; 4] = load(ctx, l4)?;
                next_header = ext[0];
                if u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 != 0 {
                    has_l4_header = false;
                }
                8
            }
            _ => break,
        };
        l4 += ext_len;
    }
    key.protocol = next_header;

    let mut tcp_flags = 0;
    if has_l4_header {
        tcp_flags = parse_l4(ctx, l4, next_header, &mut key)?;
    }
    Ok(Parsed {
        key,
        l3_bytes: payload_len + IPV6_HLEN as u64,
        tcp_flags,
    })
}

/// Fills the ports of `key` for TCP and UDP and returns the TCP flags (0 otherwise).
#[inline(always)]
fn parse_l4(ctx: &XdpContext, l4: usize, protocol: u8, key: &mut FlowKey) -> Result<u64, Skip> {
    match protocol {
        IPPROTO_TCP => {
            let tcp: [u8; TCP_MIN_HLEN] = load(ctx, l4)?;
            key.src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
            key.dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
            Ok(tcp[13] as u64)
        }
        IPPROTO_UDP => {
            let udp: [u8; UDP_HLEN] = load(ctx, l4)?;
            key.src_port = u16::from_be_bytes([udp[0], udp[1]]);
            key.dst_port = u16::from_be_bytes([udp[2], udp[3]]);
            Ok(0)
        }
        _ => Ok(0),
    }
}

#[inline(always)]
fn record(parsed: &Parsed) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if add_to_existing(parsed, now) {
        return;
    }
    let value = FlowValue {
        packets: 1,
        bytes: parsed.l3_bytes,
        first_seen_ns: now,
        last_seen_ns: now,
        tcp_flags: parsed.tcp_flags,
    };
    if FLOWS
        .insert(&parsed.key, &value, BPF_NOEXIST as u64)
        .is_err()
    {
        // Another CPU created the entry between our lookup and insert.
        add_to_existing(parsed, now);
    }
}

#[inline(always)]
fn add_to_existing(parsed: &Parsed, now: u64) -> bool {
    let Some(value) = FLOWS.get_ptr_mut(&parsed.key) else {
        return false;
    };
    // SAFETY: `value` points into a live map element; CPUs may update it concurrently, so
    // counters are changed only through atomic operations on naturally aligned fields.
    // core's Atomic* types are not available on the bpf target; the intrinsics lower to
    // BPF atomic instructions (the result is unused, so no BPF_FETCH is needed).
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*value).packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            &raw mut (*value).bytes,
            parsed.l3_bytes,
        );
        if parsed.tcp_flags != 0 {
            atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(
                &raw mut (*value).tcp_flags,
                parsed.tcp_flags,
            );
        }
        (*value).last_seen_ns = now;
    }
    true
}
