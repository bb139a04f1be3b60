//! Backend TLS (BackendTLSPolicy, re-encrypt): the client side of connections to
//! backends, built once per compiled table and shared by every connection.
//!
//! - [`BackendTlsConfigs::build`] turns the table's [`BackendTlsProfile`]s into one
//!   [`ProfileTls`] per distinct profile (roots, hostname, subjectAltNames, client
//!   certificate): its verifier, a rustls `ClientConfig` per [`Alpn`] offer, and session
//!   stores. Handing it the previous build keeps, for every unchanged profile, the session
//!   stores (TLS 1.3 tickets, TLS 1.2 session ids) and the verify cache; a profile whose
//!   roots changed gets a new verifier with an empty cache and new stores. Pools take
//!   [`ProfileTls::endpoint_config`]: the same config with one session store per
//!   endpoint, because rustls keys sessions by server name and every endpoint of a
//!   Service has the same one (each backend would be offered its neighbours' tickets).
//! - The verifier (`verify.rs`): chain, dates, key usage and name constraints by
//!   rustls-webpki against the profile's roots; then the names: `hostname` when
//!   `subjectAltNames` is empty (RFC 6125, wildcard in the left-most label only), else at
//!   least one of the SANs (DNS by the same rules, URI exactly) and `hostname` is only
//!   the SNI. A CA certificate outside its validity period is not a trust anchor (webpki
//!   alone would accept it: it keeps only an anchor's name and key). Failures are
//!   [`VerifyError`]s saying which check failed.
//! - The verify cache: after a full validation, the digest of the presented chain is
//!   remembered until the earliest notAfter of the leaf, the intermediates used and the
//!   CA (at most [`BackendTlsOptions::verify_cache_ttl`]); the same chain again skips
//!   path building and the chain's signatures. The handshake signature is verified on
//!   every handshake regardless.
//! - [`ProfileTls::connect`]: the handshake under a timeout, counting full
//!   and resumed handshakes. [`gateway_config::BackendTls::Invalid`] is an error, never plaintext.
//!
//! Nothing here picks a status code or logs a failed handshake: the caller does, with
//! the policy and endpoint as fields.

mod cache;
mod configs;
mod error;
#[cfg(test)]
mod tests;
mod verify;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[cfg(doc)]
use gateway_config::BackendTlsProfile;
use rustls::HandshakeKind;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub use configs::{BackendTlsConfigs, BackendTlsOptions, ProfileIdentity, ProfileTls};
pub use error::{BackendTlsError, ProfileBuildError};
pub use verify::VerifyError;

/// Default limit for a backend handshake (the upstream connect timeout is 5 s too).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The ALPN protocols offered to a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// `http/1.1` only.
    Http1,
    /// `h2`, then `http/1.1` (gRPC and h2-capable backends).
    H2Http1,
    /// No ALPN extension (an opaque stream: TLSRoute in Terminate mode).
    None,
}

impl Alpn {
    /// Every offer, in config order.
    pub(crate) const ALL: [Alpn; 3] = [Alpn::Http1, Alpn::H2Http1, Alpn::None];

    fn index(self) -> usize {
        match self {
            Alpn::Http1 => 0,
            Alpn::H2Http1 => 1,
            Alpn::None => 2,
        }
    }

    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::H2Http1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Alpn::None => Vec::new(),
        }
    }
}

/// The protocol the backend chose by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Negotiated {
    /// `h2`.
    H2,
    /// `http/1.1`.
    Http1,
    /// No ALPN answer: HTTP/1.1 by convention.
    None,
}

/// What the backend chose by ALPN on this connection.
pub fn negotiated<IO>(stream: &TlsStream<IO>) -> Negotiated {
    match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Negotiated::H2,
        Some(b"http/1.1") => Negotiated::Http1,
        _ => Negotiated::None,
    }
}

/// Counters of backend TLS, per profile or process-wide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendTlsStats {
    /// Certificates validated in full (path building, chain signatures, names).
    pub full_validations: u64,
    /// Certificates accepted from the verify cache.
    pub cache_hits: u64,
    /// Certificates refused.
    pub verify_failures: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Of those, resumed (no certificate at all).
    pub resumed: u64,
    /// Handshakes that failed or timed out.
    pub handshake_failures: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    full_validations: AtomicU64,
    cache_hits: AtomicU64,
    verify_failures: AtomicU64,
    handshakes: AtomicU64,
    resumed: AtomicU64,
    handshake_failures: AtomicU64,
}

impl Counters {
    /// Count in a profile's (or verifier's) counters and in the process totals.
    fn bump(own: &Counters, totals: &Counters, which: impl Fn(&Counters) -> &AtomicU64) {
        which(own).fetch_add(1, Ordering::Relaxed);
        which(totals).fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> BackendTlsStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BackendTlsStats {
            full_validations: get(&self.full_validations),
            cache_hits: get(&self.cache_hits),
            verify_failures: get(&self.verify_failures),
            handshakes: get(&self.handshakes),
            resumed: get(&self.resumed),
            handshake_failures: get(&self.handshake_failures),
        }
    }
}

impl ProfileTls {
    /// TLS over `io` to `endpoint` with this profile: SNI = the policy's hostname, the
    /// endpoint's session store ([`ProfileTls::endpoint_config`]; the profile-wide one
    /// when `endpoint` is `None`), the whole handshake within `timeout`.
    pub async fn connect<IO>(
        &self,
        io: IO,
        endpoint: Option<SocketAddr>,
        alpn: Alpn,
        timeout: Duration,
    ) -> Result<TlsStream<IO>, BackendTlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let config = match endpoint {
            Some(ep) => self.endpoint_config(ep, alpn),
            None => self.client_config(alpn).clone(),
        };
        let handshake = TlsConnector::from(config).connect(self.server_name().clone(), io);
        let result = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(BackendTlsError::from_handshake(e)),
            Err(_) => Err(BackendTlsError::HandshakeTimeout { after: timeout }),
        };
        match &result {
            Ok(stream) => {
                Counters::bump(&self.counters, &self.totals, |c| &c.handshakes);
                if stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) {
                    Counters::bump(&self.counters, &self.totals, |c| &c.resumed);
                }
            }
            Err(_) => Counters::bump(&self.counters, &self.totals, |c| &c.handshake_failures),
        }
        result
    }
}
