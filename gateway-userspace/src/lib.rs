//! gatewayd: a Gateway API dataplane for Linux nodes and bare-metal edges.
//!
//! Stages, in the order a connection meets them: `ebpf` (kernel programs: flow tracking),
//! then the listeners and protocol handlers, with `state` holding the compiled
//! configuration that `reload` swaps whole, and `admin` exposing it all. Configuration
//! semantics live in the pure `gateway-config` crate; this crate does the I/O.

pub mod admin;
pub mod cli;
pub mod ebpf;
pub mod reload;
pub mod state;
