//! What can go wrong talking to a backend endpoint.

use std::net::SocketAddr;

/// A failure between the gateway and one endpoint, before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Nothing listens there (RST to our SYN).
    #[error("connection to {addr} refused")]
    ConnectRefused {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Any other connect failure (unreachable, reset during connect).
    #[error("connecting to {addr} failed")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The TCP handshake did not finish in time.
    #[error("connecting to {addr} timed out")]
    ConnectTimeout { addr: SocketAddr },
    /// The HTTP connection could not be set up (h2 preface/settings).
    #[error("HTTP handshake with {addr} failed")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// TLS to the endpoint failed: handshake, verification of its certificate (which
    /// check, in the source), or timeout. Never followed by a plaintext attempt.
    #[error("backend TLS to {addr} failed")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: Box<crate::backend_tls::BackendTlsError>,
    },
    /// HTTP/2 was required (gRPC, `appProtocol: kubernetes.io/h2c`) and the TLS backend
    /// did not choose `h2` by ALPN.
    #[error("backend {addr} did not negotiate h2 over TLS")]
    NoH2 { addr: SocketAddr },
    /// The endpoint had its most HTTP/1.1 connections open (`--backend-max-connections`)
    /// and none came free in time (503, as an overflow in Envoy or a queue timeout in
    /// HAProxy).
    #[error(
        "{addr} had {max} connections open and none came free within {:?}",
        super::POOL_WAIT
    )]
    PoolFull { addr: SocketAddr, max: usize },
    /// The endpoint's backend TLS profile changed while the request waited for one of its
    /// connections (503; nothing was sent, so a retry picks again under the new profile).
    #[error("the TLS profile of {addr} changed while the request waited for a connection")]
    Retired { addr: SocketAddr },
    /// The connection closed or was reset after the request was handed to it and before a
    /// response head arrived.
    #[error("connection to {addr} failed before a response")]
    Reset {
        addr: SocketAddr,
        #[source]
        source: super::BoxError,
    },
}

impl UpstreamError {
    pub(crate) fn connect(addr: SocketAddr, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::ConnectionRefused {
            UpstreamError::ConnectRefused { addr, source }
        } else {
            UpstreamError::Connect { addr, source }
        }
    }

    /// `true` when the request certainly never reached the backend, so that sending it
    /// again cannot repeat a side effect.
    pub fn request_not_sent(&self) -> bool {
        !matches!(self, UpstreamError::Reset { .. })
    }

    /// `true` for a timeout (answered 504), `false` for a failure (502).
    pub fn is_timeout(&self) -> bool {
        match self {
            UpstreamError::ConnectTimeout { .. } => true,
            UpstreamError::Tls { source, .. } => matches!(
                **source,
                crate::backend_tls::BackendTlsError::HandshakeTimeout { .. }
            ),
            _ => false,
        }
    }
}
