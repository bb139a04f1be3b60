//! The backend certificate verifier: rustls-webpki for the chain, the policy's names on
//! top, and the verify cache in front.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use aws_lc_rs::digest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::cache::{chain_digest, VerifyCache};
use super::Counters;

/// Why a backend's certificate was refused. The message names the check that failed and,
/// for name checks, what was wanted and what the certificate carries (names are public;
/// no key material is ever part of it).
#[derive(Clone, Debug, thiserror::Error)]
pub enum VerifyError {
    /// The certificate could not be parsed.
    #[error("backend certificate is malformed: {reason}")]
    BadCertificate {
        /// The parser's complaint.
        reason: String,
    },
    /// No path to the policy's CA certificates (unknown issuer, bad signature, wrong key
    /// usage, name constraints, path too long, ...).
    #[error("backend certificate chain is not trusted by the policy's CA certificates: {source}")]
    UntrustedChain {
        /// rustls-webpki's verdict.
        #[source]
        source: webpki::Error,
    },
    /// A certificate of the presented chain has expired.
    #[error("backend certificate {subject} expired at {not_after}")]
    Expired {
        /// Subject of the expired certificate.
        subject: String,
        /// Its notAfter.
        not_after: String,
    },
    /// A certificate of the presented chain is not valid yet.
    #[error("backend certificate {subject} is not valid before {not_before}")]
    NotYetValid {
        /// Subject of the certificate.
        subject: String,
        /// Its notBefore.
        not_before: String,
    },
    /// The chain leads to a CA certificate of the policy that is outside its validity
    /// period (expired, or not valid yet), and to no other.
    #[error(
        "backend certificate chain leads to CA certificate {subject}, which is outside its \
         validity period ({not_before} to {not_after})"
    )]
    CaExpired {
        /// Subject of the CA certificate.
        subject: String,
        /// Its notBefore.
        not_before: String,
        /// Its notAfter.
        not_after: String,
    },
    /// `subjectAltNames` is empty and the certificate does not match `hostname`.
    #[error("backend certificate does not match hostname {hostname}; it names {presented:?}")]
    HostnameMismatch {
        /// The policy's hostname.
        hostname: String,
        /// DNS, IP and URI names the certificate carries.
        presented: Vec<String>,
    },
    /// The certificate carries none of the policy's `subjectAltNames`.
    #[error("backend certificate carries none of the subjectAltNames {wanted:?}; it names {presented:?}")]
    SanMismatch {
        /// The policy's `subjectAltNames` (`dns:` / `uri:`).
        wanted: Vec<String>,
        /// DNS, IP and URI names the certificate carries.
        presented: Vec<String>,
    },
}

/// Unix seconds as rustls sees them, kept signed for certificates dated before 1970.
fn secs(t: UnixTime) -> i64 {
    i64::try_from(t.as_secs()).unwrap_or(i64::MAX)
}

fn show_time(unix: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(unix)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("@{unix}"))
}

/// Validity of one certificate.
#[derive(Clone, Debug)]
struct Validity {
    subject: String,
    not_before: i64,
    not_after: i64,
}

impl Validity {
    fn of(cert: &X509Certificate<'_>) -> Self {
        let v = cert.validity();
        Validity {
            subject: cert.subject().to_string(),
            not_before: v.not_before.timestamp(),
            not_after: v.not_after.timestamp(),
        }
    }

    fn contains(&self, now: i64) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// The trust anchors of a profile, with the validity of the CA certificate each came from.
#[derive(Debug)]
pub(crate) struct TrustStore {
    anchors: Vec<TrustAnchor<'static>>,
    /// Parallel to `anchors`.
    cas: Vec<Validity>,
    /// Every CA is valid in `[all_from, all_until]`: no per-anchor check needed then.
    all_from: i64,
    all_until: i64,
    /// Certificates that could not be used as anchors.
    pub(crate) skipped: usize,
}

/// A digest of a set of CA certificates that ignores order and duplicates: the identity
/// of a profile's roots. Same digest, same roots, same verify cache.
pub(crate) fn roots_digest(certs: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut each: Vec<[u8; 32]> = certs
        .iter()
        .map(|c| {
            let mut d = [0u8; 32];
            d.copy_from_slice(digest::digest(&digest::SHA256, c.as_ref()).as_ref());
            d
        })
        .collect();
    each.sort_unstable();
    each.dedup();
    let mut ctx = digest::Context::new(&digest::SHA256);
    for d in &each {
        ctx.update(d);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl TrustStore {
    /// Every certificate that parses as an anchor; the others are counted in `skipped`.
    pub(crate) fn new(certs: &[CertificateDer<'_>]) -> Self {
        let mut anchors = Vec::with_capacity(certs.len());
        let mut cas = Vec::with_capacity(certs.len());
        let mut skipped = 0;
        for der in certs {
            let parsed = X509Certificate::from_der(der.as_ref());
            match (webpki::anchor_from_trusted_cert(der), parsed) {
                (Ok(anchor), Ok((_, cert))) => {
                    anchors.push(anchor.to_owned());
                    cas.push(Validity::of(&cert));
                }
                _ => skipped += 1,
            }
        }
        let all_from = cas.iter().map(|v| v.not_before).max().unwrap_or(i64::MIN);
        let all_until = cas.iter().map(|v| v.not_after).min().unwrap_or(i64::MAX);
        TrustStore {
            anchors,
            cas,
            all_from,
            all_until,
            skipped,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.anchors.len()
    }

    /// Index of an anchor handed back by webpki (it hands back a reference into ours).
    fn index_of(&self, anchor: &TrustAnchor<'_>) -> Option<usize> {
        self.anchors.iter().position(|a| std::ptr::eq(a, anchor))
    }

    fn valid_at(&self, index: usize, now: i64) -> bool {
        (self.all_from <= now && now <= self.all_until)
            || self.cas.get(index).is_some_and(|v| v.contains(now))
    }
}

/// Which names authenticate the backend.
#[derive(Debug)]
pub(crate) enum Names {
    /// `subjectAltNames` empty: the certificate must match `hostname`.
    Hostname {
        name: ServerName<'static>,
        text: Box<str>,
    },
    /// At least one of these; `hostname` plays no part.
    Sans {
        /// DNS names. `None` when the value is not a reference name rustls accepts (a
        /// wildcard such as `*.example.com`): it then matches a certificate DNS name that
        /// is the same string (ASCII case-insensitive), the certificate issued for it.
        dns: Vec<(Option<ServerName<'static>>, Box<str>)>,
        /// Exact URIs.
        uris: Vec<Box<str>>,
    },
}

impl Names {
    fn wanted(&self) -> Vec<String> {
        match self {
            Names::Hostname { text, .. } => vec![format!("dns:{text}")],
            Names::Sans { dns, uris } => dns
                .iter()
                .map(|(_, t)| format!("dns:{t}"))
                .chain(uris.iter().map(|u| format!("uri:{u}")))
                .collect(),
        }
    }

    fn check(&self, ee: &webpki::EndEntityCert<'_>, leaf: &LeafNames) -> Result<(), VerifyError> {
        match self {
            Names::Hostname { name, text } => {
                ee.verify_is_valid_for_subject_name(name).map_err(|_| {
                    VerifyError::HostnameMismatch {
                        hostname: text.to_string(),
                        presented: leaf.presented(),
                    }
                })
            }
            Names::Sans { dns, uris } => {
                let dns_ok = dns.iter().any(|(name, text)| match name {
                    Some(n) => ee.verify_is_valid_for_subject_name(n).is_ok(),
                    None => leaf.dns.iter().any(|d| d.eq_ignore_ascii_case(text)),
                });
                let uri_ok = || uris.iter().any(|u| leaf.uris.iter().any(|p| p == &**u));
                if dns_ok || uri_ok() {
                    Ok(())
                } else {
                    Err(VerifyError::SanMismatch {
                        wanted: self.wanted(),
                        presented: leaf.presented(),
                    })
                }
            }
        }
    }
}

/// What the leaf says about itself, from x509-parser.
struct LeafNames {
    validity: Validity,
    dns: Vec<String>,
    ips: Vec<String>,
    uris: Vec<String>,
}

impl LeafNames {
    fn parse(der: &[u8]) -> Result<Self, VerifyError> {
        let bad = |e: &dyn fmt::Display| VerifyError::BadCertificate {
            reason: e.to_string(),
        };
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| bad(&e))?;
        let mut out = LeafNames {
            validity: Validity::of(&cert),
            dns: Vec::new(),
            ips: Vec::new(),
            uris: Vec::new(),
        };
        if let Some(san) = cert.subject_alternative_name().map_err(|e| bad(&e))? {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => out.dns.push(d.to_string()),
                    GeneralName::URI(u) => out.uris.push(u.to_string()),
                    GeneralName::IPAddress(b) => out.ips.push(match b.len() {
                        4 => format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3]),
                        _ => format!("{b:02x?}"),
                    }),
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// For error messages: at most 16 names.
    fn presented(&self) -> Vec<String> {
        self.dns
            .iter()
            .map(|d| format!("dns:{d}"))
            .chain(self.ips.iter().map(|i| format!("ip:{i}")))
            .chain(self.uris.iter().map(|u| format!("uri:{u}")))
            .take(16)
            .collect()
    }
}

/// A profile's server certificate verifier. One per (roots, names); every `ClientConfig`
/// with those shares it, and so shares its verify cache.
pub(crate) struct Verifier {
    roots: Arc<TrustStore>,
    names: Names,
    algs: WebPkiSupportedAlgorithms,
    cache: VerifyCache,
    ttl: u64,
    pub(crate) counters: Arc<Counters>,
    totals: Arc<Counters>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("anchors", &self.roots.len())
            .field("names", &self.names)
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub(crate) fn new(
        roots: Arc<TrustStore>,
        names: Names,
        algs: WebPkiSupportedAlgorithms,
        cache_capacity: usize,
        ttl: std::time::Duration,
        totals: Arc<Counters>,
    ) -> Self {
        Verifier {
            roots,
            names,
            algs,
            cache: VerifyCache::new(cache_capacity),
            ttl: ttl.as_secs(),
            counters: Arc::default(),
            totals,
        }
    }

    /// Chains held by the verify cache.
    pub(crate) fn cached(&self) -> usize {
        self.cache.len()
    }

    /// The full validation; on success, the last second the result may be reused (the
    /// earliest notAfter of the leaf, the intermediates used and the CA).
    fn validate(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<i64, VerifyError> {
        let now_s = secs(now);
        let leaf = LeafNames::parse(end_entity.as_ref())?;
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(|e| {
            VerifyError::BadCertificate {
                reason: e.to_string(),
            }
        })?;
        // webpki treats an anchor as a bare name and key, so it never looks at the CA
        // certificate's dates; we refuse a path ending at a CA outside its validity and
        // let webpki try the other anchors (a renewed CA with the same key, another CA).
        let refused_ca = Cell::new(None);
        let anchor_in_date =
            |path: &webpki::VerifiedPath<'_>| match self.roots.index_of(path.anchor()) {
                Some(i) if !self.roots.valid_at(i, now_s) => {
                    refused_ca.set(Some(i));
                    Err(webpki::Error::UnknownIssuer)
                }
                Some(_) => Ok(()),
                // An anchor that is not one of ours cannot have its dates checked: refuse.
                None => Err(webpki::Error::UnknownIssuer),
            };
        let path = ee
            .verify_for_usage(
                self.algs.all,
                &self.roots.anchors,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
                None,
                Some(&anchor_in_date),
            )
            .map_err(|e| self.chain_error(e, &leaf, intermediates, refused_ca.get(), now_s))?;
        self.names.check(&ee, &leaf)?;

        let mut until = leaf.validity.not_after;
        for cert in path.intermediate_certificates() {
            if let Ok((_, c)) = X509Certificate::from_der(cert.der().as_ref()) {
                until = until.min(c.validity().not_after.timestamp());
            }
        }
        if let Some(ca) = self
            .roots
            .index_of(path.anchor())
            .and_then(|i| self.roots.cas.get(i))
        {
            until = until.min(ca.not_after);
        }
        Ok(until)
    }

    fn chain_error(
        &self,
        err: webpki::Error,
        leaf: &LeafNames,
        intermediates: &[CertificateDer<'_>],
        refused_ca: Option<usize>,
        now: i64,
    ) -> VerifyError {
        // Which presented certificate is out of date: the leaf first, then the others.
        let presented = || {
            std::iter::once(leaf.validity.clone()).chain(intermediates.iter().filter_map(|c| {
                X509Certificate::from_der(c.as_ref())
                    .ok()
                    .map(|(_, c)| Validity::of(&c))
            }))
        };
        match err {
            webpki::Error::UnknownIssuer => match refused_ca.and_then(|i| self.roots.cas.get(i)) {
                Some(ca) => VerifyError::CaExpired {
                    subject: ca.subject.clone(),
                    not_before: show_time(ca.not_before),
                    not_after: show_time(ca.not_after),
                },
                None => VerifyError::UntrustedChain { source: err },
            },
            webpki::Error::CertExpired { not_after, .. } => {
                let v = presented().find(|v| v.not_after < now);
                VerifyError::Expired {
                    subject: v.as_ref().map_or_else(String::new, |v| v.subject.clone()),
                    not_after: show_time(v.map_or(secs(not_after), |v| v.not_after)),
                }
            }
            webpki::Error::CertNotValidYet { not_before, .. } => {
                let v = presented().find(|v| v.not_before > now);
                VerifyError::NotYetValid {
                    subject: v.as_ref().map_or_else(String::new, |v| v.subject.clone()),
                    not_before: show_time(v.map_or(secs(not_before), |v| v.not_before)),
                }
            }
            source => VerifyError::UntrustedChain { source },
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        // Always the profile's hostname: the config is the profile's own.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let now_s = secs(now);
        let key = chain_digest(end_entity.as_ref(), intermediates);
        let now_u = now.as_secs();
        if self.cache.is_fresh(&key, now_u) {
            Counters::bump(&self.counters, &self.totals, |c| &c.cache_hits);
            return Ok(ServerCertVerified::assertion());
        }
        Counters::bump(&self.counters, &self.totals, |c| &c.full_validations);
        match self.validate(end_entity, intermediates, now) {
            Ok(not_after) => {
                // Good through `not_after` inclusive; the cache's deadline is exclusive.
                let until = u64::try_from(not_after.saturating_add(1))
                    .unwrap_or(0)
                    .min(now_u.saturating_add(self.ttl));
                if now_s <= not_after {
                    self.cache.insert(key, until, now_u);
                }
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => {
                Counters::bump(&self.counters, &self.totals, |c| &c.verify_failures);
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(e)),
                )))
            }
        }
    }

    // The handshake signature proves the peer holds the certificate's key: checked on
    // every handshake, cache hit or not.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The [`VerifyError`] inside a rustls error, when our verifier produced it.
pub(crate) fn verify_error_of(err: &rustls::Error) -> Option<&VerifyError> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<VerifyError>()
        }
        _ => None,
    }
}
