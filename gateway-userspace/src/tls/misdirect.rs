//! Misdirected requests (RFC 9110 §15.5.20, Gateway API listener isolation): HTTP/2
//! connection reuse lets a client send, on a connection whose SNI selected one
//! listener, a request for a host that another listener of the same port serves. That
//! listener's routes, certificate and client validation were not the ones negotiated, so
//! the request is answered 421 and the client retries on a new connection.

use gateway_config::{Bind, ListenerId, RouteTable};

/// Is a request with this `Host` (or `:authority`; a port is ignored) misdirected on a
/// connection whose SNI selected `sni_listener`? `true` when the Host selects another
/// listener of the bind, or none. Use the table the connection was accepted with
/// ([`super::TlsBindings::table`]). Allocates nothing.
pub fn is_misdirected(
    table: &RouteTable,
    bind: &Bind,
    sni_listener: ListenerId,
    host: &str,
) -> bool {
    table
        .select_listener(bind, Some(host))
        .is_none_or(|l| l.id != sni_listener)
}
