//! gatewayd's kernel programs. Built for `bpfel-unknown-none` with nightly by
//! `gateway-userspace/build.rs` (aya-build) and embedded in the `gatewayd` binary.
//!
//! - `xdp_flow` (ingress): parse, drop what the ACL, the unlisted-port rule or the SYN
//!   guard refuses (each drop counted by reason), count per listener and per flow.
//! - `tc_reply` (TC egress): count the reply direction in the same flow entry.
//! - `sk_lookup_steer` (netns `sk_lookup`): connections to steered addresses (Gateway
//!   addresses and ranges the host does not bind) go to their bind's listening socket.
//! - `sk_reuseport_pick` (`SO_REUSEPORT` groups): the worker socket of a new connection,
//!   by flow hash among the workers that are not draining.
//!
//! Depends only on `aya-ebpf` and `gateway-common` (the shared map types). Packet memory is
//! read only through [`packet::load`], which checks bounds against `data_end` first, as the
//! verifier requires.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic RMW on map values (core's Atomic* types lack them on bpf).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
// eBPF programs read packet memory through raw pointers; each access is bounds-checked.
#![allow(unsafe_code)]
// Map calls take `impl Borrow<K>`: passing keys by value copies them on the 512-byte BPF
// stack (measured: xdp_flow +55 instructions and +16 bytes of stack; time within noise).
#![allow(clippy::needless_borrows_for_generic_args)]

#[cfg(target_arch = "bpf")]
mod flow;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod sk_lookup;
#[cfg(target_arch = "bpf")]
mod sk_reuseport;
#[cfg(target_arch = "bpf")]
mod tc;
#[cfg(target_arch = "bpf")]
mod xdp;

/// Built for the host (workspace `cargo check`/`clippy`), this crate is an empty binary; the
/// programs only exist for the bpf target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; this only satisfies the linker.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
