//! PEM certificates and keys from Secrets and ConfigMaps, checked and converted to DER
//! ready for rustls (no rustls config is built here).

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain and its private key (RSA PKCS#1, PKCS#8 or ECDSA SEC1), as DER.
#[derive(Debug)]
pub struct CertifiedKeyDer {
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
    /// `namespace/name` of the Secret it came from.
    pub source: String,
}

/// Why PEM material was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PemError {
    /// No `CERTIFICATE` block.
    #[error("no PEM certificate in {field}")]
    NoCertificate {
        /// Field read (`tls.crt`, `ca.crt`).
        field: &'static str,
    },
    /// A certificate block is not a valid X.509 certificate.
    #[error("certificate {index} in {field} is not valid X.509: {reason}")]
    BadCertificate {
        /// Field read.
        field: &'static str,
        /// 0-based index in the bundle.
        index: usize,
        /// Parser message.
        reason: String,
    },
    /// No usable private key.
    #[error("no valid PEM private key (RSA, PKCS#8 or EC) in tls.key: {reason}")]
    BadKey {
        /// Parser message.
        reason: String,
    },
}

/// Parse every certificate of a PEM bundle; all must be valid X.509, and at least one.
pub fn parse_certificates(
    pem: &[u8],
    field: &'static str,
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let mut out = Vec::new();
    for (index, item) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let der = item.map_err(|e| PemError::BadCertificate {
            field,
            index,
            reason: e.to_string(),
        })?;
        if let Err(e) = x509_parser::parse_x509_certificate(&der) {
            return Err(PemError::BadCertificate {
                field,
                index,
                reason: e.to_string(),
            });
        }
        out.push(der);
    }
    if out.is_empty() {
        return Err(PemError::NoCertificate { field });
    }
    Ok(out)
}

/// Parse a `kubernetes.io/tls` pair.
pub fn parse_key_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    source: String,
) -> Result<CertifiedKeyDer, PemError> {
    let chain = parse_certificates(cert_pem, "tls.crt")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| PemError::BadKey {
        reason: e.to_string(),
    })?;
    Ok(CertifiedKeyDer { chain, key, source })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn data(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR")))
            .expect("invariant: test data file exists")
    }

    #[test]
    fn rsa_pkcs1_pkcs8_and_ecdsa_sec1_pkcs8_keys_are_accepted() {
        for (cert, key) in [
            ("rsa.crt", "rsa.pkcs1.key"),
            ("rsa.crt", "rsa.pkcs8.key"),
            ("ec.crt", "ec.sec1.key"),
            ("ec.crt", "ec.pkcs8.key"),
        ] {
            let pair = parse_key_pair(&data(cert), &data(key), "ns/s".to_string());
            let pair = pair.unwrap_or_else(|e| panic!("{cert} + {key}: {e}"));
            assert_eq!(pair.chain.len(), 1);
        }
    }

    #[test]
    fn a_certificate_is_not_a_key() {
        let err = parse_key_pair(&data("ec.crt"), &data("ec.crt"), String::new());
        assert!(matches!(err, Err(PemError::BadKey { .. })), "{err:?}");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(
            parse_certificates(b"hello", "ca.crt"),
            Err(PemError::NoCertificate { field: "ca.crt" })
        );
    }
}
