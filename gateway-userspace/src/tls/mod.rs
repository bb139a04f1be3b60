//! Edge TLS termination: rustls server configs built once per compiled
//! [`RouteTable`](gateway_config::RouteTable), the handshake with its timeout, and the
//! misdirected-request rule.
//!
//! - [`TlsBindings::build`] turns a compiled table into, per TLS bind (address:port),
//!   the `Arc<ServerConfig>`s its terminating listeners need. Certificates are picked by
//!   SNI across all listeners of the port with the table's own listener selection
//!   (exact hostname, then the longest wildcard, then the listener without hostname),
//!   and every `CertifiedKey` is built here, never per connection. Listeners that share
//!   a TLS policy (ALPN, client-certificate validation, resumption) share one config, so
//!   a port of plain HTTPS listeners has exactly one ([`BindTls::server_config`]).
//! - [`SessionResumption`] holds the ticket keys and the session cache. It is created
//!   once per process and handed to every build, so tickets survive reloads; tickets and
//!   cached sessions are scoped to the client-certificate policy they were issued under.
//! - [`accept`] reads the ClientHello, selects the listener by SNI, completes the
//!   handshake with that listener's config, all within [`HANDSHAKE_TIMEOUT`].
//! - [`is_misdirected`]: the listener the Host selects must be the one the SNI selected,
//!   else the request gets 421.
//!
//! Certificate rotation is a reload: the caller builds new `TlsBindings` with the new
//! table and swaps them whole (`ArcSwap<TlsBindings>`, or inside its snapshot), so new
//! handshakes get the new certificates while established connections keep theirs.
//!
//! Backend TLS (BackendTLSPolicy, client side) is not here; it belongs with `upstream`.

mod accept;
mod bindings;
mod frontend;
mod misdirect;
mod resumption;
pub mod status;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;

pub use accept::{accept, accept_with_timeout, HandshakeError, Terminated};
pub use bindings::{BindTls, TlsBindings, TlsBuildError, TlsProblem};
pub use misdirect::is_misdirected;
pub use resumption::SessionResumption;

/// A client that sends nothing, or stalls its handshake, is closed after this (DESIGN §6).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Listener `tls.options` keys that turn session resumption off (`"off"`) or on (`"on"`,
/// the default): ours, and the one the side-by-side bench harness sets.
pub const SESSION_RESUMPTION_OPTIONS: [&str; 2] = [
    "gateway.networking.example/tls-session-resumption",
    "bench.example.test/tls-session-resumption",
];

/// ALPN of HTTPS listeners, in server preference order.
pub const HTTP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The crypto provider of every TLS config: aws-lc-rs with its default suites, all
/// AEAD with ECDHE (TLS 1.3: AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305; TLS 1.2:
/// ECDHE-ECDSA/RSA with the same AEADs) and key exchange X25519MLKEM768, X25519,
/// P-256, P-384. No CBC, no RSA key exchange, no finite-field DH.
///
/// The suites are in server preference order ([`rustls::ServerConfig::ignore_client_order`]
/// is set): AES-128-GCM first, as the side-by-side harness configures HAProxy and nginx
/// (`ssl-default-server-ciphersuites`, server preference) and as common server defaults
/// do; it is as strong in practice and cheaper per record than AES-256-GCM, which
/// OpenSSL clients list first.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        _ => 4,
    };
    // A stable sort: within a rank the provider's order stays.
    p.cipher_suites.sort_by_key(rank);
    Arc::new(p)
}

/// TLS 1.3 and 1.2 only.
pub const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
