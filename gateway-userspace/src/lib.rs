//! gatewayd: a Gateway API dataplane for Linux nodes and bare-metal edges.
//!
//! Stages, in the order a connection meets them: `ebpf` (kernel programs: flow tracking),
//! `listen` (one `SO_REUSEPORT` socket per bind and `worker`), `dispatch` (what the
//! bind's listeners make of the connection), `http` (HTTP/1.1 and h2c,
//! routing, filters), `tls` (edge termination: certificates by SNI, resumption, client
//! certificates), `passthrough` (ClientHello peek, routing by SNI, splice) and `upstream`
//! (pooled backend connections), with `state` holding the compiled
//! configuration that `reload` swaps whole, `drain` taking workers out of the kernel's
//! choice for new connections, and `admin` exposing it all. Configuration
//! semantics live in the pure `gateway-config` crate; this crate does the I/O.

pub mod admin;
pub mod backend_tls;
pub mod cli;
pub mod dispatch;
pub mod drain;
pub mod ebpf;
pub mod http;
pub mod listen;
pub mod passthrough;
pub mod phase;
pub mod reload;
pub mod state;
pub mod tls;
pub mod upstream;
pub mod worker;
