//! `sk_reuseport_pick` (attached to the `SO_REUSEPORT` group of every bind): picks the
//! worker socket of a new connection by the kernel's flow hash, among the workers that
//! are not draining (`REUSEPORT_LIVE`), so a draining worker gets no new connections.
//! With no worker left the connection is refused; for a group or a socket userspace has
//! not registered yet, the kernel's own hash decides.

use core::{
    intrinsics::{atomic_xadd, AtomicOrdering},
    ptr::read_volatile,
};

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    cty::c_void,
    helpers::bpf_sk_select_reuseport,
    macros::sk_reuseport,
    programs::SkReuseportContext,
};
use gateway_common::{
    ListenerKey, FAMILY_IPV4, FAMILY_IPV6, IPPROTO_TCP, SOCKET_PICKED, SOCKET_PICK_FALLBACK,
    SOCKET_REFUSED,
};

use crate::maps::{REUSEPORT_GROUPS, REUSEPORT_LIVE, SOCKETS, SOCKET_STATS};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Counts an event of the socket programs in `SOCKET_STATS`.
#[inline(always)]
pub fn count_socket_event(slot: u32) {
    if let Some(counter) = SOCKET_STATS.get_ptr_mut(slot) {
        // SAFETY: this CPU's own copy of a live map value; the add is atomic because the
        // socket programs may run in process context as well as in softirq.
        unsafe { atomic_xadd::<_, _, { AtomicOrdering::Relaxed }>(counter, 1u64) };
    }
}

#[sk_reuseport]
pub fn sk_reuseport_pick(ctx: SkReuseportContext) -> u32 {
    match try_sk_reuseport_pick(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

#[inline(always)]
fn try_sk_reuseport_pick(ctx: &SkReuseportContext) -> Result<u32, u32> {
    if ctx.ip_protocol() != u32::from(IPPROTO_TCP) {
        return Ok(fallback());
    }
    let Some(key) = group_key(ctx) else {
        return Ok(fallback());
    };
    let Some(base) = REUSEPORT_GROUPS.get_ptr(&key) else {
        return Ok(fallback());
    };
    // SAFETY: a live element of REUSEPORT_GROUPS; userspace replaces values whole.
    let base = unsafe { *base };
    // Userspace writes the list before it attaches the program to any group, so a count
    // of zero means that every worker is draining.
    let Some(&live) = REUSEPORT_LIVE.get(0) else {
        return Ok(fallback());
    };
    if live == 0 {
        count_socket_event(SOCKET_REFUSED);
        return Ok(SK_DROP);
    }
    let Some(&worker) = REUSEPORT_LIVE.get(1 + ctx.hash() % live) else {
        return Ok(fallback());
    };
    let mut index = base.wrapping_add(worker);
    // aya-ebpf wraps this helper for REUSEPORT_SOCKARRAY only; `SOCKETS` is a SOCKMAP
    // (see gateway-common), which the kernel accepts here too.
    // SAFETY: `md` is this run's context; the map pointer is the address of a map
    // definition (`SockMap` is a transparent wrapper around it), which the loader
    // relocates to the map; `index` lives through the call; no flags are defined.
    let selected = unsafe {
        bpf_sk_select_reuseport(
            ctx.md,
            (&raw const SOCKETS).cast_mut().cast::<c_void>(),
            (&raw mut index).cast::<c_void>(),
            0,
        )
    };
    if selected == 0 {
        count_socket_event(SOCKET_PICKED);
        Ok(SK_PASS)
    } else {
        Ok(fallback())
    }
}

/// `SK_PASS` without a selection: the kernel picks by its own hash.
#[inline(always)]
fn fallback() -> u32 {
    count_socket_event(SOCKET_PICK_FALLBACK);
    SK_PASS
}

/// The address and port the group's sockets are bound to, as userspace registered it.
#[inline(always)]
fn group_key(ctx: &SkReuseportContext) -> Option<ListenerKey> {
    // SAFETY: `md` is the kernel's `sk_reuseport_md` for this run and its `sk` field a
    // socket of the group (PTR_TO_SOCKET, never null, Linux 5.14+). The verifier allows
    // no pointer arithmetic on a socket, so every field is one volatile load at its
    // offset, with its own size.
    let sk = unsafe { (*ctx.md).__bindgen_anon_3.sk };
    // SAFETY: as above.
    let (family, port) = unsafe {
        (
            read_volatile(&raw const (*sk).family),
            read_volatile(&raw const (*sk).src_port),
        )
    };
    let mut key = ListenerKey {
        addr: [0; 16],
        // The bound port, in host byte order.
        port: port as u16,
        protocol: IPPROTO_TCP,
        family: 0,
    };
    match family {
        AF_INET => {
            key.family = FAMILY_IPV4;
            // SAFETY: as above; network byte order.
            let addr = unsafe { read_volatile(&raw const (*sk).src_ip4) };
            key.addr[..4].copy_from_slice(&addr.to_ne_bytes());
        }
        AF_INET6 => {
            key.family = FAMILY_IPV6;
            // SAFETY: as above, four 32-bit words in network byte order.
            let words = unsafe {
                [
                    read_volatile(&raw const (*sk).src_ip6[0]),
                    read_volatile(&raw const (*sk).src_ip6[1]),
                    read_volatile(&raw const (*sk).src_ip6[2]),
                    read_volatile(&raw const (*sk).src_ip6[3]),
                ]
            };
            for (i, word) in words.iter().enumerate() {
                key.addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
            }
        }
        _ => return None,
    }
    Some(key)
}
