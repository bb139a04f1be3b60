//! `sk_lookup_steer` (attached to the network namespace): a new TCP connection whose
//! destination address and port fall in a steered prefix (a Gateway address the host does
//! not bind, or a whole address range) is handed to the listening socket of its bind, so
//! no socket is bound per address. Everything else passes to the kernel's own lookup.
//!
//! When the chosen socket belongs to a `SO_REUSEPORT` group, the kernel then runs the
//! group's selection (`sk_reuseport_pick`) to choose the worker.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::sk_action::SK_PASS, macros::sk_lookup, maps::lpm_trie::Key, programs::SkLookupContext,
};
use gateway_common::{
    steer_v4, steer_v6, IPPROTO_TCP, SOCKET_STEERED, SOCKET_STEER_MISSED, STEER_PORT_BITS,
};

use crate::{
    maps::{SOCKETS, STEER_V4, STEER_V6},
    sk_reuseport::count_socket_event,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sk_lookup]
pub fn sk_lookup_steer(ctx: SkLookupContext) -> u32 {
    match try_sk_lookup_steer(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

#[inline(always)]
fn try_sk_lookup_steer(ctx: &SkLookupContext) -> Result<u32, u32> {
    let lookup = ctx.lookup;
    // SAFETY: `lookup` is the kernel's `bpf_sk_lookup` for this run; each field is read
    // once with its own size, as the verifier allows for this context.
    let (protocol, family, port) =
        unsafe { ((*lookup).protocol, (*lookup).family, (*lookup).local_port) };
    if protocol != u32::from(IPPROTO_TCP) {
        return Ok(SK_PASS);
    }
    // The local port is in host byte order and below 65,536.
    let port = port as u16;
    let slot: Option<&u32> = match family {
        AF_INET => {
            // SAFETY: as above; the address is in network byte order, so its bytes in
            // memory are the address's bytes in order.
            let addr = unsafe { read_volatile(&raw const (*lookup).local_ip4) }.to_ne_bytes();
            STEER_V4.get(Key::new(STEER_PORT_BITS + 32, steer_v4(port, addr)))
        }
        AF_INET6 => {
            // SAFETY: as above, four 32-bit words.
            let words = unsafe {
                [
                    read_volatile(&raw const (*lookup).local_ip6[0]),
                    read_volatile(&raw const (*lookup).local_ip6[1]),
                    read_volatile(&raw const (*lookup).local_ip6[2]),
                    read_volatile(&raw const (*lookup).local_ip6[3]),
                ]
            };
            let mut addr = [0u8; 16];
            for (i, word) in words.iter().enumerate() {
                addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
            }
            STEER_V6.get(Key::new(STEER_PORT_BITS + 128, steer_v6(port, addr)))
        }
        _ => None,
    };
    let Some(&index) = slot else {
        return Ok(SK_PASS);
    };
    // The socket of a bind that is being closed or rebound may be missing for a moment:
    // then the kernel's lookup decides, as if the program were not there.
    match SOCKETS.redirect_sk_lookup(ctx, index, 0) {
        Ok(()) => count_socket_event(SOCKET_STEERED),
        Err(_) => count_socket_event(SOCKET_STEER_MISSED),
    }
    Ok(SK_PASS)
}
