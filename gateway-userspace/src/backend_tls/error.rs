//! Errors of backend TLS: building a profile, and connecting with one.

use std::time::Duration;

use super::verify::VerifyError;

/// Why a profile has no client config. Requests to its backends fail closed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProfileBuildError {
    /// None of the policy's CA certificates can be a trust anchor.
    #[error("no usable CA certificate ({skipped} could not be parsed)")]
    NoUsableCa {
        /// Certificates rejected.
        skipped: usize,
    },
    /// `wellKnownCACertificates: System` and the system store gave no certificate.
    #[error("the system trust store has no usable certificate ({reason})")]
    SystemRootsUnavailable {
        /// What loading reported (paths come from SSL_CERT_FILE / SSL_CERT_DIR or the
        /// platform's defaults).
        reason: String,
    },
    /// `hostname` is not a name rustls can send as SNI and verify.
    #[error("hostname {hostname:?} is not a valid server name")]
    InvalidHostname {
        /// The policy's hostname.
        hostname: String,
    },
    /// The Gateway's client certificate (`spec.tls.backend.clientCertificateRef`) was
    /// refused by rustls (unsupported key type, key not matching).
    #[error("client certificate {source_secret} cannot be used: {source}")]
    ClientCertificate {
        /// `namespace/name` of the Secret.
        source_secret: String,
        /// rustls's verdict.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the configuration (a build invariant: our versions and provider).
    #[error("client config refused by rustls: {source}")]
    Config {
        /// rustls's verdict.
        #[source]
        source: rustls::Error,
    },
}

/// Why a backend TLS connection could not be made. The caller logs it with the policy
/// and endpoint; nothing here carries key material.
#[derive(Debug, thiserror::Error)]
pub enum BackendTlsError {
    /// The backend's BackendTLSPolicy is invalid: fail closed, never plaintext.
    #[error("the backend's BackendTLSPolicy is invalid: refusing to connect (never plaintext)")]
    InvalidPolicy,
    /// The backend has no BackendTLSPolicy; TLS was asked for anyway (a caller bug).
    #[error("the backend has no BackendTLSPolicy")]
    NotConfigured,
    /// The profile's client config could not be built.
    #[error("backend TLS for BackendTLSPolicy {policy} is unavailable: {source}")]
    Unavailable {
        /// `namespace/name` of the policy.
        policy: String,
        /// Why.
        #[source]
        source: ProfileBuildError,
    },
    /// The profile is not from the table these configs were built for (configs and table
    /// must come from the same snapshot).
    #[error("TLS profile {id} of BackendTLSPolicy {policy} is not from this configuration")]
    StaleProfile {
        /// The profile's id in its table.
        id: u32,
        /// `namespace/name` of the policy.
        policy: String,
    },
    /// The handshake did not finish in time.
    #[error("backend TLS handshake did not finish within {after:?}")]
    HandshakeTimeout {
        /// The limit.
        after: Duration,
    },
    /// Our verifier refused the backend's certificate.
    #[error("backend certificate refused: {source}")]
    Verify {
        /// Which check failed.
        #[source]
        source: VerifyError,
    },
    /// The handshake failed otherwise (alert from the backend, protocol error, ...).
    #[error("backend TLS handshake failed: {source}")]
    Handshake {
        /// rustls's error.
        #[source]
        source: rustls::Error,
    },
    /// The transport failed during the handshake.
    #[error("backend TLS handshake I/O: {source}")]
    Io {
        /// The socket's error.
        #[source]
        source: std::io::Error,
    },
}

impl BackendTlsError {
    /// Sort a handshake's `io::Error` (tokio-rustls wraps rustls errors in one).
    pub(crate) fn from_handshake(err: std::io::Error) -> Self {
        let Some(tls) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        else {
            return BackendTlsError::Io { source: err };
        };
        match super::verify::verify_error_of(tls) {
            Some(v) => BackendTlsError::Verify { source: v.clone() },
            None => BackendTlsError::Handshake {
                source: tls.clone(),
            },
        }
    }
}
