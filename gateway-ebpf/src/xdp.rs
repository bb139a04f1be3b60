//! `xdp_flow`: parse, count the packet in `STATS`, then, in this order, drop what the ACL
//! denies (source prefix), what targets one of the gateway's addresses (or ranges) on a
//! port no listener serves (`--xdp-drop-unlisted`) and SYNs beyond their source's token
//! bucket (`--syn-rate-limit`); every drop is counted in `DROPS` by reason and makes no
//! flow. Passed packets are counted per listener (exact address, then address range, then
//! wildcard) and in their flow.

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_coarse_ns, macros::xdp, maps::lpm_trie::Key,
    programs::XdpContext,
};
use gateway_common::{
    steer_v4, steer_v6, AddrKey, DataplaneConfig, DropReason, ListenerKey, CONFIG_ACL_V4,
    CONFIG_ACL_V6, CONFIG_DROP_UNLISTED, CONFIG_RANGES, CONFIG_SYN_GUARD, FAMILY_IPV4,
    FLOW_ORIGIN_INGRESS, IPPROTO_TCP, IPPROTO_UDP, STATS_XDP, STEER_PORT_BITS, TCP_ACK, TCP_SYN,
};

use crate::{
    flow::{count_drop, count_listener, count_stats, record, Side, Update},
    maps::{
        ACL_V4, ACL_V6, CONFIG, GATEWAY_ADDRS, GATEWAY_RANGES_V4, GATEWAY_RANGES_V6, LISTENERS,
        LISTENER_PORTS, LISTENER_RANGES_V4, LISTENER_RANGES_V6, SYN_BUCKETS,
    },
    packet::{parse, Parsed},
};

#[xdp]
pub fn xdp_flow(ctx: XdpContext) -> u32 {
    match try_xdp_flow(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

#[inline(always)]
fn try_xdp_flow(ctx: &XdpContext) -> Result<u32, u32> {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let mut parsed = Parsed::default();
    let result = parse(ctx, &mut parsed);
    count_stats(STATS_XDP, frame_len, &result);
    if result.is_err() {
        return Ok(xdp_action::XDP_PASS);
    }
    let Some(config) = CONFIG.get(0) else {
        return Ok(xdp_action::XDP_PASS);
    };
    // Cheapest refusal first, and the listener lookup only for what the ACL lets in.
    if config.flags & (CONFIG_ACL_V4 | CONFIG_ACL_V6) != 0 && acl_denies(&parsed, config.flags) {
        return Ok(refuse(DropReason::Acl));
    }
    let listener = find_listener(&parsed, config.flags);
    if config.flags & CONFIG_DROP_UNLISTED != 0
        && listener.is_none()
        && is_unlisted(&parsed, config)
    {
        return Ok(refuse(DropReason::Unlisted));
    }
    // The coarse clock (CLOCK_MONOTONIC at tick resolution) is enough for idle timeouts
    // and the SYN guard, and saves ~22 ns per packet over bpf_ktime_get_ns in the
    // benches (docs/benchmarks.md). SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if config.flags & CONFIG_SYN_GUARD != 0
        && parsed.key.protocol == IPPROTO_TCP
        && parsed.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        && !syn_allowed(&parsed, config, now)
    {
        return Ok(refuse(DropReason::SynFlood));
    }

    // `FlowValue::listener` is the id + 1 (0: none).
    let listener_field = listener.map_or(0, |id| id + 1);
    if let Some(id) = listener {
        count_listener(id, Side::Forward, 1, parsed.l3_bytes);
    }
    let update = Update {
        packets: 1,
        l3_bytes: parsed.l3_bytes,
        tcp_flags: parsed.tcp_flags as u64,
        now,
        listener: listener_field,
        origin: FLOW_ORIGIN_INGRESS,
    };
    record(&parsed.key, &update);
    Ok(xdp_action::XDP_PASS)
}

/// The id of the listener serving the packet's destination: the exact address first, then
/// the longest address range on that port (with [`CONFIG_RANGES`]), then the wildcard
/// (unspecified address) of its family, as the kernel's `sk_lookup` steering and socket
/// lookup choose. The port bitmap answers "none" for most packets without a hash lookup.
#[inline(always)]
fn find_listener(parsed: &Parsed, flags: u32) -> Option<u32> {
    if !parsed.has_ports {
        return None;
    }
    let port = parsed.key.dst_port;
    let word = LISTENER_PORTS
        .get(u32::from(port >> 6))
        .copied()
        .unwrap_or(0);
    if word & (1u64 << (port & 63)) == 0 {
        return None;
    }
    let mut key = ListenerKey {
        addr: parsed.key.dst_addr,
        port: parsed.key.dst_port,
        protocol: parsed.key.protocol,
        family: parsed.key.family,
    };
    if let Some(value) = LISTENERS.get_ptr(&key) {
        // SAFETY: a live element of LISTENERS; userspace replaces values whole.
        return Some(unsafe { (*value).id });
    }
    if flags & CONFIG_RANGES != 0 && parsed.key.protocol == IPPROTO_TCP {
        if let Some(id) = find_range_listener(parsed) {
            return Some(id);
        }
    }
    key.addr = [0; 16];
    // SAFETY: as above.
    LISTENERS.get_ptr(&key).map(|value| unsafe { (*value).id })
}

/// The listener of the longest address range holding the destination, on its port.
#[inline(always)]
fn find_range_listener(parsed: &Parsed) -> Option<u32> {
    let port = parsed.key.dst_port;
    if parsed.key.family == FAMILY_IPV4 {
        LISTENER_RANGES_V4
            .get(Key::new(
                STEER_PORT_BITS + 32,
                steer_v4(port, v4(&parsed.key.dst_addr)),
            ))
            .map(|value| value.id)
    } else {
        LISTENER_RANGES_V6
            .get(Key::new(
                STEER_PORT_BITS + 128,
                steer_v6(port, parsed.key.dst_addr),
            ))
            .map(|value| value.id)
    }
}

/// The destination is in one of the gateway's address ranges.
#[inline(always)]
fn in_gateway_range(parsed: &Parsed) -> bool {
    if parsed.key.family == FAMILY_IPV4 {
        GATEWAY_RANGES_V4
            .get(Key::new(32, v4(&parsed.key.dst_addr)))
            .is_some()
    } else {
        GATEWAY_RANGES_V6
            .get(Key::new(128, parsed.key.dst_addr))
            .is_some()
    }
}

/// An IPv4 address as `Parsed` holds it: the first 4 of 16 bytes.
#[inline(always)]
fn v4(addr: &[u8; 16]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}

/// Counts a drop by reason; the verdict.
#[inline(always)]
fn refuse(reason: DropReason) -> u32 {
    count_drop(reason as u32);
    xdp_action::XDP_DROP
}

/// The source address is in a denied prefix.
#[inline(always)]
fn acl_denies(parsed: &Parsed, flags: u32) -> bool {
    if parsed.key.family == FAMILY_IPV4 {
        if flags & CONFIG_ACL_V4 == 0 {
            return false;
        }
        ACL_V4.get(Key::new(32, v4(&parsed.key.src_addr))).is_some()
    } else {
        if flags & CONFIG_ACL_V6 == 0 {
            return false;
        }
        ACL_V6.get(Key::new(128, parsed.key.src_addr)).is_some()
    }
}

/// TCP or UDP (with ports) to one of the gateway's addresses, or into one of its address
/// ranges, on a port outside the kernel's ephemeral range; the caller knows no listener
/// serves it.
#[inline(always)]
fn is_unlisted(parsed: &Parsed, config: &DataplaneConfig) -> bool {
    let protocol = parsed.key.protocol;
    if !parsed.has_ports || (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP) {
        return false;
    }
    let port = parsed.key.dst_port;
    if port >= config.ephemeral_low && port <= config.ephemeral_high {
        return false;
    }
    let addr = AddrKey {
        addr: parsed.key.dst_addr,
        family: parsed.key.family,
        _pad: [0; 3],
    };
    GATEWAY_ADDRS.get_ptr(&addr).is_some()
        || (config.flags & CONFIG_RANGES != 0 && in_gateway_range(parsed))
}

/// The SYN guard: a generic cell rate algorithm per source address. A source may send
/// `burst` SYNs at once and then one per `syn_interval_ns`. Concurrent CPUs may each let
/// one SYN through for the same slot (the update is a plain store): the limit is exact on
/// one CPU and approximate across several, which is what a flood guard needs.
#[inline(always)]
fn syn_allowed(parsed: &Parsed, config: &DataplaneConfig, now: u64) -> bool {
    let source = AddrKey {
        addr: parsed.key.src_addr,
        family: parsed.key.family,
        _pad: [0; 3],
    };
    match SYN_BUCKETS.get_ptr_mut(&source) {
        Some(tat) => {
            // SAFETY: a live element of SYN_BUCKETS; a u64 load/store is single-copy atomic.
            let stored = unsafe { *tat };
            let arrival = if stored > now { stored } else { now };
            if arrival - now > config.syn_tolerance_ns {
                return false;
            }
            // SAFETY: as above.
            unsafe { *tat = arrival + config.syn_interval_ns };
            true
        }
        None => {
            // A full table evicts the least recently seen source: the new one starts with
            // a full bucket either way.
            let _ = SYN_BUCKETS.insert(&source, now + config.syn_interval_ns, 0);
            true
        }
    }
}
