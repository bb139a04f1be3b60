//! `tc_reply` (TC egress): count what the host sends in the flow entries `xdp_flow` made,
//! on their reverse side, so that one entry holds both directions; a flow the host starts
//! gets its own entry (origin egress) whose replies `xdp_flow` then counts. Never drops.

use aya_ebpf::{
    bindings::TC_ACT_OK, helpers::bpf_ktime_get_coarse_ns, macros::classifier, programs::TcContext,
};
use gateway_common::{FLOW_ORIGIN_EGRESS, STATS_TC};

use crate::{
    flow::{count_listener, count_stats, record, Side, Update},
    packet::{parse, Parsed},
};

/// Bytes pulled into the linear part of the skb when the headers are not all there: an
/// Ethernet + VLAN header, IPv6 with a few extension headers, and TCP with options.
const PULL_LEN: u32 = 192;

/// `TC_ACT_OK` (0) in the `u32` of `try_*` results.
const ACT_OK: u32 = TC_ACT_OK as u32;

#[classifier]
pub fn tc_reply(ctx: TcContext) -> i32 {
    match try_tc_reply(&ctx) {
        Ok(action) | Err(action) => action as i32,
    }
}

#[inline(always)]
fn try_tc_reply(ctx: &TcContext) -> Result<u32, u32> {
    let len = ctx.len();
    let want = if len < PULL_LEN { len } else { PULL_LEN };
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        // Headers in paged data are invisible to direct access until pulled.
        let _ = ctx.pull_data(want);
    }
    let mut parsed = Parsed::default();
    let result = parse(ctx, &mut parsed);
    count_stats(STATS_TC, len as u64, &result);
    if result.is_err() {
        return Ok(ACT_OK);
    }

    // A GSO packet leaves as `gso_segs` segments on the wire, each repeating the headers.
    // SAFETY: reading a field of the program's own __sk_buff context.
    let segments = match unsafe { (*ctx.skb.skb).gso_segs } {
        0 => 1,
        n => n as u64,
    };
    let l3_bytes = parsed.l3_bytes + (segments - 1) * parsed.header_bytes;
    // The coarse clock (CLOCK_MONOTONIC at tick resolution) is enough for idle timeouts
    // and the SYN guard, and saves ~22 ns per packet over bpf_ktime_get_ns in the
    // benches (docs/benchmarks.md). SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let update = Update {
        packets: segments,
        l3_bytes,
        tcp_flags: parsed.tcp_flags as u64,
        now,
        listener: 0,
        origin: FLOW_ORIGIN_EGRESS,
    };
    let listener = record(&parsed.key, &update);
    if listener != 0 {
        count_listener(listener - 1, Side::Reverse, segments, l3_bytes);
    }
    Ok(ACT_OK)
}
