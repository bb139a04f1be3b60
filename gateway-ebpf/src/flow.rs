//! Flow-table updates and the per-CPU counters, shared by `xdp_flow` and `tc_reply`.
//!
//! A flow's key is the direction of its first packet. A packet updates the entry of its
//! own key ("forward") or, failing that, of its reversed key ("reverse"); only when neither
//! exists is an entry created.

use core::intrinsics::{atomic_or, atomic_xadd, AtomicOrdering};

use aya_ebpf::bindings::BPF_NOEXIST;
use gateway_common::{
    FlowKey, FlowValue, ListenerStats, Stats, FLOW_ORIGIN_EGRESS, FLOW_ORIGIN_INGRESS,
};

use crate::{
    maps::{DROPS, FLOWS, LISTENER_STATS, STATS},
    packet::Skip,
};

/// Which counters of an entry a packet goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Forward,
    Reverse,
}

/// What one packet adds to a flow.
pub struct Update {
    pub packets: u64,
    pub l3_bytes: u64,
    pub tcp_flags: u64,
    pub now: u64,
    /// `FlowValue::listener` for the packet's direction (`xdp_flow` only: it looks the
    /// listener up; `tc_reply` leaves an entry's listener alone).
    pub listener: u32,
    /// `FLOW_ORIGIN_INGRESS` (`xdp_flow`) or `FLOW_ORIGIN_EGRESS` (`tc_reply`).
    pub origin: u32,
}

/// Counts a packet in the `STATS` slot of the program that saw it.
#[inline(always)]
pub fn count_stats(slot: u32, frame_len: u64, parsed: &Result<(), Skip>) {
    if let Some(stats) = STATS.get_ptr_mut(slot) {
        // SAFETY: the per-CPU slot is this CPU's own; XDP and TC egress both run with
        // bottom halves disabled, so no other program writes this CPU's copy meanwhile.
        let stats: &mut Stats = unsafe { &mut *stats };
        stats.packets += 1;
        stats.bytes += frame_len;
        match parsed {
            Err(Skip::Malformed) => stats.parse_failures += 1,
            Err(Skip::NonIp) => stats.non_ip += 1,
            Ok(_) => {}
        }
    }
}

/// Counts a drop in `DROPS[reason]`.
#[inline(always)]
pub fn count_drop(reason: u32) {
    if let Some(counter) = DROPS.get_ptr_mut(reason) {
        // SAFETY: this CPU's own copy, see `count_stats`.
        unsafe { *counter += 1 };
    }
}

/// Counts a packet of listener `id` (the slot, not the `+1` form of `FlowValue::listener`).
#[inline(always)]
pub fn count_listener(id: u32, side: Side, packets: u64, l3_bytes: u64) {
    if let Some(stats) = LISTENER_STATS.get_ptr_mut(id) {
        // SAFETY: this CPU's own copy, see `count_stats`.
        let stats: &mut ListenerStats = unsafe { &mut *stats };
        match side {
            Side::Forward => {
                stats.rx_packets += packets;
                stats.rx_bytes += l3_bytes;
            }
            Side::Reverse => {
                stats.tx_packets += packets;
                stats.tx_bytes += l3_bytes;
            }
        }
    }
}

/// Adds `update` to the existing entry of `key` on `side`; `None` when there is no entry,
/// else the entry's listener afterwards. An ingress packet on the forward side writes its
/// listener into the entry, keeping it current across reloads and restarts (a pinned table
/// outlives the listener ids of the process that filled it).
#[inline(always)]
fn add_to_existing(key: &FlowKey, side: Side, update: &Update) -> Option<u32> {
    let value = FLOWS.get_ptr_mut(key)?;
    // SAFETY: `value` points into a live map element; CPUs may update it concurrently, so
    // counters are changed only through atomic operations on naturally aligned fields
    // (plain stores for the timestamp and listener, where the last writer winning is
    // right). core's Atomic* types are not available on the bpf target; the intrinsics
    // lower to BPF atomic instructions (the result is unused, so no BPF_FETCH is needed).
    unsafe {
        let (packets, bytes, flags) = match side {
            Side::Forward => (
                &raw mut (*value).packets,
                &raw mut (*value).bytes,
                &raw mut (*value).tcp_flags,
            ),
            Side::Reverse => (
                &raw mut (*value).rev_packets,
                &raw mut (*value).rev_bytes,
                &raw mut (*value).rev_tcp_flags,
            ),
        };
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(packets, update.packets);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(bytes, update.l3_bytes);
        if update.tcp_flags != 0 {
            atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(flags, update.tcp_flags);
        }
        (*value).last_seen_ns = update.now;
        if side == Side::Forward
            && update.origin == FLOW_ORIGIN_INGRESS
            && (*value).listener != update.listener
        {
            (*value).listener = update.listener;
        }
        Some((*value).listener)
    }
}

/// Counts a packet in `FLOWS`: on its own entry, on the reverse entry, or on a new entry
/// keyed by its direction. Returns the entry's listener when the packet was counted on the
/// reverse side (a reply), else 0.
///
/// A separate BPF function (not inlined): its locals (the reversed key, a new entry) get a
/// stack frame of their own instead of adding to the caller's 512 bytes.
#[inline(never)]
pub fn record(key: &FlowKey, update: &Update) -> u32 {
    let reversed = key.reversed();
    // Most egress packets are replies to flows xdp_flow made: look there first.
    if update.origin == FLOW_ORIGIN_EGRESS {
        if let Some(listener) = add_to_existing(&reversed, Side::Reverse, update) {
            return listener;
        }
        if add_to_existing(key, Side::Forward, update).is_some() {
            return 0;
        }
    } else {
        if add_to_existing(key, Side::Forward, update).is_some() {
            return 0;
        }
        if let Some(listener) = add_to_existing(&reversed, Side::Reverse, update) {
            return listener;
        }
    }
    let value = FlowValue {
        packets: update.packets,
        bytes: update.l3_bytes,
        first_seen_ns: update.now,
        last_seen_ns: update.now,
        tcp_flags: update.tcp_flags,
        listener: if update.origin == FLOW_ORIGIN_INGRESS {
            update.listener
        } else {
            0
        },
        origin: update.origin,
        ..FlowValue::default()
    };
    if FLOWS.insert(key, &value, BPF_NOEXIST as u64).is_err() {
        // Another CPU created the entry between our lookup and insert.
        add_to_existing(key, Side::Forward, update);
    }
    0
}
