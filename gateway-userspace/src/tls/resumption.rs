//! Session resumption state shared by every `ServerConfig` of the process, across reloads.
//!
//! rustls resumes a session only for the same SNI, but it does not ask whether the
//! client-certificate policy that authenticated the original handshake still holds: a
//! ticket issued where no client certificate was required would resume on a listener
//! that requires one, and a session authenticated under a CA that was since removed
//! would resume too. So every ticket and cached session is bound to a *scope*, a
//! fingerprint of the listener's client-certificate policy; a ticket from another scope
//! fails to decrypt (a full handshake follows) and cache lookups miss.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use gateway_config::FrontendValidation;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};

/// Sessions kept for TLS 1.2 session-ID resumption (and TLS 1.3 clients that get no
/// ticket); LRU beyond.
const SESSION_CACHE_SIZE: usize = 20_000;

/// Ticket keys and session cache, created once per process and handed to every
/// [`TlsBindings::build`](super::TlsBindings::build): tickets survive reloads.
#[derive(Clone)]
pub struct SessionResumption {
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<dyn StoresServerSessions>,
}

impl fmt::Debug for SessionResumption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionResumption")
            .field("ticket_lifetime_s", &self.ticketer.lifetime())
            .finish_non_exhaustive()
    }
}

impl SessionResumption {
    /// Fresh random ticket keys (AES-256-GCM via aws-lc-rs, rotated every 6 hours, the
    /// previous key still accepted) and an empty session cache.
    pub fn new() -> Result<SessionResumption, rustls::Error> {
        Ok(SessionResumption {
            ticketer: rustls::crypto::aws_lc_rs::Ticketer::new()?,
            cache: ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
        })
    }

    pub(crate) fn scoped(&self, scope: Scope) -> (Arc<ScopedTicketer>, Arc<ScopedSessions>) {
        (
            Arc::new(ScopedTicketer {
                inner: self.ticketer.clone(),
                scope,
            }),
            Arc::new(ScopedSessions {
                inner: self.cache.clone(),
                scope,
            }),
        )
    }
}

/// A fingerprint of a listener's client-certificate policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Scope([u8; 8]);

impl Scope {
    /// The scope of a policy: same CA certificates and fallback mode, same scope, so a
    /// reload that keeps the policy keeps the tickets valid.
    pub(crate) fn of(frontend: Option<&FrontendValidation>) -> Scope {
        // SipHash with fixed keys: stable within the process, which is the lifetime of
        // the ticket keys. The inputs come from configuration, not from clients.
        let mut h = std::hash::DefaultHasher::new();
        match frontend {
            None => 0u8.hash(&mut h),
            Some(f) => {
                1u8.hash(&mut h);
                f.allow_insecure_fallback.hash(&mut h);
                f.ca_certificates.len().hash(&mut h);
                for ca in &f.ca_certificates {
                    ca.as_ref().hash(&mut h);
                }
            }
        }
        Scope(h.finish().to_be_bytes())
    }

    fn prefixed(&self, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.0.len() + data.len());
        v.extend_from_slice(&self.0);
        v.extend_from_slice(data);
        v
    }
}

/// The shared ticketer, with the scope sealed inside each ticket.
#[derive(Debug)]
pub(crate) struct ScopedTicketer {
    inner: Arc<dyn ProducesTickets>,
    scope: Scope,
}

impl ProducesTickets for ScopedTicketer {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.inner.encrypt(&self.scope.prefixed(plain))
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let mut plain = self.inner.decrypt(cipher)?;
        if plain.get(..self.scope.0.len()) != Some(&self.scope.0[..]) {
            return None;
        }
        plain.drain(..self.scope.0.len());
        Some(plain)
    }
}

/// The shared session cache, keyed by scope and session id.
#[derive(Debug)]
pub(crate) struct ScopedSessions {
    inner: Arc<dyn StoresServerSessions>,
    scope: Scope,
}

impl StoresServerSessions for ScopedSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(self.scope.prefixed(&key), value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.get(&self.scope.prefixed(key))
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.take(&self.scope.prefixed(key))
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_decrypts_only_in_the_scope_it_was_issued_in() {
        let shared = SessionResumption::new().expect("ticketer");
        let open = Scope::of(None);
        let ca = FrontendValidation {
            ca_certificates: vec![vec![1u8, 2, 3].into()],
            allow_insecure_fallback: false,
        };
        let mtls = Scope::of(Some(&ca));
        assert_ne!(open, mtls);
        let (t_open, s_open) = shared.scoped(open);
        let (t_mtls, s_mtls) = shared.scoped(mtls);
        let ticket = t_open.encrypt(b"session").expect("encrypt");
        assert_eq!(t_open.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        assert_eq!(t_mtls.decrypt(&ticket), None);
        // A reload that keeps the policy keeps the scope (and the tickets).
        let (t_again, _) = shared.scoped(Scope::of(None));
        assert_eq!(t_again.decrypt(&ticket).as_deref(), Some(&b"session"[..]));

        assert!(s_open.put(b"id".to_vec(), b"v".to_vec()));
        assert_eq!(s_mtls.get(b"id"), None);
        assert_eq!(s_open.get(b"id").as_deref(), Some(&b"v"[..]));
        assert_eq!(s_open.take(b"id").as_deref(), Some(&b"v"[..]));
        assert_eq!(s_open.get(b"id"), None);
    }

    #[test]
    fn the_scope_follows_the_ca_set_and_the_fallback_mode() {
        let f = |cas: &[&[u8]], fallback| FrontendValidation {
            ca_certificates: cas.iter().map(|c| c.to_vec().into()).collect(),
            allow_insecure_fallback: fallback,
        };
        let a = Scope::of(Some(&f(&[b"ca1"], false)));
        assert_eq!(a, Scope::of(Some(&f(&[b"ca1"], false))));
        assert_ne!(a, Scope::of(Some(&f(&[b"ca1"], true))));
        assert_ne!(a, Scope::of(Some(&f(&[b"ca2"], false))));
        assert_ne!(a, Scope::of(Some(&f(&[b"ca1", b"ca2"], false))));
    }
}
