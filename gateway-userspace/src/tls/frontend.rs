//! Client certificate validation of a listener (Gateway `spec.tls.frontend`, default or
//! per port), as a rustls `ClientCertVerifier` built once per compile.

use std::sync::Arc;

use gateway_config::FrontendValidation;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::TlsBuildError;

/// The verifier for a listener's frontend validation.
///
/// `AllowValidOnly`: a certificate chaining to one of the CAs is required (webpki: chain,
/// validity dates, key usage `clientAuth`). `AllowInsecureFallback`: a certificate is
/// asked for, but the handshake goes on without one or with one that does not validate;
/// such a certificate is still visible in the connection's peer certificates, so nothing
/// downstream may treat peer certificates of a fallback listener as authenticated.
pub(crate) fn client_verifier(
    f: &FrontendValidation,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsBuildError> {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(f.ca_certificates.iter().cloned());
    if added == 0 {
        return Err(TlsBuildError::NoUsableCa { ignored });
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if f.allow_insecure_fallback {
        let inner = builder
            .allow_unauthenticated()
            .build()
            .map_err(|source| TlsBuildError::Verifier { source })?;
        Ok(Arc::new(InsecureFallback { inner }))
    } else {
        builder
            .build()
            .map_err(|source| TlsBuildError::Verifier { source })
    }
}

/// `AllowInsecureFallback`: chain validation errors are logged and ignored; the
/// handshake signature is still checked (a client must own the key it presents).
#[derive(Debug)]
struct InsecureFallback {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for InsecureFallback {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Err(e) = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            tracing::debug!(error = %e, "client certificate not valid; AllowInsecureFallback accepts it");
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
