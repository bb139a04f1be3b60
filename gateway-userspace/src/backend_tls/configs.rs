//! Client configs per profile, built with the table, carried over reloads when unchanged.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::digest;
use gateway_config::{BackendTls, BackendTlsProfile, RouteTable, SubjectAltName, TrustRoots};
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;

use super::error::{BackendTlsError, ProfileBuildError};
use super::verify::{roots_digest, Names, TrustStore, Verifier};
use super::{Alpn, BackendTlsStats, Counters};

/// Tuning of [`BackendTlsConfigs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendTlsOptions {
    /// Chains each verifier remembers (0 turns the verify cache off).
    pub verify_cache_capacity: usize,
    /// A remembered chain is validated again after this, even if it has not expired.
    pub verify_cache_ttl: Duration,
    /// Endpoints per profile with their own session store (oldest forgotten first).
    pub endpoint_sessions: usize,
}

impl Default for BackendTlsOptions {
    fn default() -> Self {
        BackendTlsOptions {
            verify_cache_capacity: 4096,
            verify_cache_ttl: Duration::from_secs(600),
            endpoint_sessions: 4096,
        }
    }
}

/// What makes two verifiers the same: roots (by digest) and the names checked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct VerifyKey {
    system: bool,
    roots: [u8; 32],
    hostname: Box<str>,
    sans: Vec<SubjectAltName>,
}

/// What makes two client configs the same: the verifier and the client certificate.
/// (ALPN is chosen per connection among the profile's configs.)
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ProfileKey {
    verify: VerifyKey,
    client_cert: Option<[u8; 32]>,
}

/// Identity of a profile's TLS state, for pool keys: equal while the profile's content
/// (roots, hostname, SANs, client certificate) is unchanged across reloads, new when any
/// of it changes, so connections verified under other roots are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProfileIdentity(u64);

static NEXT_IDENTITY: AtomicU64 = AtomicU64::new(1);

/// The client side of one profile: its verifier (and verify cache), its configs and
/// session stores. Shared by every connection; survives reloads while unchanged.
#[derive(Debug)]
pub struct ProfileTls {
    identity: ProfileIdentity,
    server_name: ServerName<'static>,
    pub(super) verifier: Arc<Verifier>,
    /// One config per [`Alpn`], sharing one session store.
    shared: [Arc<ClientConfig>; 3],
    endpoints: Mutex<EndpointSessions>,
    endpoint_capacity: usize,
    pub(crate) counters: Arc<Counters>,
    pub(crate) totals: Arc<Counters>,
}

#[derive(Debug, Default)]
struct EndpointSessions {
    map: HashMap<SocketAddr, EndpointEntry>,
    order: VecDeque<SocketAddr>,
}

#[derive(Debug)]
struct EndpointEntry {
    store: Arc<ClientSessionMemoryCache>,
    configs: [Option<Arc<ClientConfig>>; 3],
}

/// Sessions of one server name: 8 is the smallest size that keeps one name with its
/// eight TLS 1.3 tickets.
fn session_store() -> Arc<ClientSessionMemoryCache> {
    Arc::new(ClientSessionMemoryCache::new(8))
}

impl ProfileTls {
    /// The identity to put in pool keys.
    pub fn identity(&self) -> ProfileIdentity {
        self.identity
    }

    /// The SNI and the name rustls is asked to verify (the policy's `hostname`).
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// The profile's config for `alpn`, with one session store for the whole profile.
    /// Resumption then works when every endpoint shares ticket keys (or there is one);
    /// pools should prefer [`ProfileTls::endpoint_config`].
    pub fn client_config(&self, alpn: Alpn) -> &Arc<ClientConfig> {
        &self.shared[alpn.index()]
    }

    /// The profile's config for `alpn` with the session store of `endpoint`. rustls keys
    /// sessions by server name only, and every endpoint of a Service has the same one: a
    /// single store would offer endpoint A's ticket to endpoint B, which cannot decrypt
    /// it, so with independent backends nearly nothing would resume. Built on first use
    /// and kept (a lock on this path, taken per new pool, not per request); everything
    /// but the session store is shared with [`ProfileTls::client_config`].
    pub fn endpoint_config(&self, endpoint: SocketAddr, alpn: Alpn) -> Arc<ClientConfig> {
        let i = alpn.index();
        // Consistent after every statement: a panic elsewhere cannot leave it broken.
        let mut eps = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if !eps.map.contains_key(&endpoint) {
            while eps.map.len() >= self.endpoint_capacity.max(1) {
                let Some(old) = eps.order.pop_front() else {
                    break;
                };
                eps.map.remove(&old);
            }
            eps.order.push_back(endpoint);
            eps.map.insert(
                endpoint,
                EndpointEntry {
                    store: session_store(),
                    configs: [None, None, None],
                },
            );
        }
        let Some(entry) = eps.map.get_mut(&endpoint) else {
            return self.shared[i].clone();
        };
        if let Some(c) = &entry.configs[i] {
            return c.clone();
        }
        let mut config = (*self.shared[i]).clone();
        config.resumption = Resumption::store(entry.store.clone() as Arc<dyn ClientSessionStore>);
        let config = Arc::new(config);
        entry.configs[i] = Some(config.clone());
        config
    }

    /// Counters of this profile: handshakes are its own; validations and cache hits are
    /// its verifier's, shared with profiles of the same roots and names.
    pub fn stats(&self) -> BackendTlsStats {
        let v = self.verifier.counters.snapshot();
        let h = self.counters.snapshot();
        BackendTlsStats {
            full_validations: v.full_validations,
            cache_hits: v.cache_hits,
            verify_failures: v.verify_failures,
            ..h
        }
    }

    /// Chains in the verify cache.
    pub fn cached_chains(&self) -> usize {
        self.verifier.cached()
    }
}

struct Entry {
    source: Arc<BackendTlsProfile>,
    tls: Result<Arc<ProfileTls>, ProfileBuildError>,
}

/// The client configs of every backend TLS profile of one compiled table. Build it with
/// the table, keep it in the same snapshot, and hand the previous one to the next build
/// so unchanged profiles keep their session stores and verify caches.
pub struct BackendTlsConfigs {
    entries: Vec<Entry>,
    verifiers: HashMap<VerifyKey, Arc<Verifier>>,
    profiles: HashMap<ProfileKey, Arc<ProfileTls>>,
    totals: Arc<Counters>,
    options: BackendTlsOptions,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for BackendTlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTlsConfigs")
            .field("profiles", &self.entries.len())
            .field("distinct", &self.profiles.len())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Default for BackendTlsConfigs {
    fn default() -> Self {
        Self::empty(BackendTlsOptions::default())
    }
}

impl BackendTlsConfigs {
    /// No profiles: the `previous` of the first build.
    pub fn empty(options: BackendTlsOptions) -> Self {
        BackendTlsConfigs {
            entries: Vec::new(),
            verifiers: HashMap::new(),
            profiles: HashMap::new(),
            totals: Arc::default(),
            options,
            provider: crate::tls::provider(),
        }
    }

    /// One client config set per profile of `table`. Reads the system trust store when a
    /// profile uses it (blocking file I/O: call it where the table is compiled, off the
    /// request path).
    pub fn build(table: &RouteTable, previous: &BackendTlsConfigs) -> Self {
        Self::from_profiles(table.backend_tls_profiles(), previous)
    }

    /// [`BackendTlsConfigs::build`] from profiles directly (tests, benches). `profiles[i]`
    /// must have `id == i`, as a table's do.
    pub fn from_profiles(
        profiles: &[Arc<BackendTlsProfile>],
        previous: &BackendTlsConfigs,
    ) -> Self {
        let mut out = BackendTlsConfigs {
            entries: Vec::with_capacity(profiles.len()),
            verifiers: HashMap::new(),
            profiles: HashMap::new(),
            totals: previous.totals.clone(),
            options: previous.options,
            provider: previous.provider.clone(),
        };
        let system = profiles
            .iter()
            .any(|p| matches!(p.roots, TrustRoots::System))
            .then(load_system_roots);
        let mut stores: HashMap<(bool, [u8; 32]), Arc<TrustStore>> = HashMap::new();
        for p in profiles {
            let tls = out
                .profile(p, previous, system.as_ref(), &mut stores)
                .map_err(|e| {
                    tracing::warn!(policy = %p.policy, error = %e, "backend TLS profile unusable; its backends fail closed");
                    e
                });
            out.entries.push(Entry {
                source: p.clone(),
                tls,
            });
        }
        out
    }

    fn profile(
        &mut self,
        p: &BackendTlsProfile,
        previous: &BackendTlsConfigs,
        system: Option<&Result<Vec<CertificateDer<'static>>, String>>,
        stores: &mut HashMap<(bool, [u8; 32]), Arc<TrustStore>>,
    ) -> Result<Arc<ProfileTls>, ProfileBuildError> {
        let (is_system, certs) = match &p.roots {
            TrustRoots::Certificates(c) => (false, c.as_slice()),
            TrustRoots::System => match system {
                Some(Ok(c)) => (true, c.as_slice()),
                Some(Err(reason)) => {
                    return Err(ProfileBuildError::SystemRootsUnavailable {
                        reason: reason.clone(),
                    })
                }
                None => (true, &[][..]),
            },
        };
        let verify = VerifyKey {
            system: is_system,
            roots: roots_digest(certs),
            hostname: p.hostname.clone(),
            sans: p.subject_alt_names.clone(),
        };
        let key = ProfileKey {
            verify: verify.clone(),
            client_cert: p.client_certificate.as_ref().map(|c| {
                let mut ctx = digest::Context::new(&digest::SHA256);
                for der in &c.chain {
                    ctx.update(&u32::try_from(der.len()).unwrap_or(u32::MAX).to_be_bytes());
                    ctx.update(der.as_ref());
                }
                ctx.update(c.key.secret_der());
                let mut d = [0u8; 32];
                d.copy_from_slice(ctx.finish().as_ref());
                d
            }),
        };
        if let Some(t) = self.profiles.get(&key) {
            return Ok(t.clone());
        }
        if let Some(t) = previous.profiles.get(&key) {
            self.profiles.insert(key, t.clone());
            if let Some(v) = previous.verifiers.get(&verify) {
                self.verifiers.insert(verify, v.clone());
            }
            return Ok(t.clone());
        }

        let server_name = ServerName::try_from(p.hostname.to_string()).map_err(|_| {
            ProfileBuildError::InvalidHostname {
                hostname: p.hostname.to_string(),
            }
        })?;
        let verifier = match self
            .verifiers
            .get(&verify)
            .or_else(|| previous.verifiers.get(&verify))
        {
            Some(v) => v.clone(),
            None => {
                let store = stores
                    .entry((is_system, verify.roots))
                    .or_insert_with(|| Arc::new(TrustStore::new(certs)))
                    .clone();
                if store.is_empty() {
                    return Err(if is_system {
                        ProfileBuildError::SystemRootsUnavailable {
                            reason: format!("{} certificates, none usable", store.skipped),
                        }
                    } else {
                        ProfileBuildError::NoUsableCa {
                            skipped: store.skipped,
                        }
                    });
                }
                let names = if p.subject_alt_names.is_empty() {
                    Names::Hostname {
                        name: server_name.clone(),
                        text: p.hostname.clone(),
                    }
                } else {
                    let mut dns = Vec::new();
                    let mut uris = Vec::new();
                    for san in &p.subject_alt_names {
                        match san {
                            SubjectAltName::Hostname(h) => {
                                dns.push((ServerName::try_from(h.to_string()).ok(), h.clone()))
                            }
                            SubjectAltName::Uri(u) => uris.push(u.clone()),
                        }
                    }
                    Names::Sans { dns, uris }
                };
                Arc::new(Verifier::new(
                    store,
                    names,
                    self.provider.signature_verification_algorithms,
                    self.options.verify_cache_capacity,
                    self.options.verify_cache_ttl,
                    self.totals.clone(),
                ))
            }
        };
        self.verifiers.insert(verify, verifier.clone());

        let store = session_store();
        let config = |alpn: Alpn| -> Result<Arc<ClientConfig>, ProfileBuildError> {
            let builder = ClientConfig::builder_with_provider(self.provider.clone())
                .with_protocol_versions(crate::tls::PROTOCOL_VERSIONS)
                .map_err(|source| ProfileBuildError::Config { source })?
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone());
            let mut c = match &p.client_certificate {
                Some(ck) => builder
                    .with_client_auth_cert(ck.chain.clone(), ck.key.clone_key())
                    .map_err(|source| ProfileBuildError::ClientCertificate {
                        source_secret: ck.source.clone(),
                        source,
                    })?,
                None => builder.with_no_client_auth(),
            };
            c.alpn_protocols = alpn.protocols();
            c.resumption = Resumption::store(store.clone() as Arc<dyn ClientSessionStore>);
            Ok(Arc::new(c))
        };
        // The other configs are clones of the first, not built anew: rustls resumes a
        // session only with the very verifier and client-certificate resolver (by
        // pointer) it was made with, and every ALPN offer shares the session stores.
        let http1 = config(Alpn::Http1)?;
        let with_alpn = |alpn: Alpn| {
            let mut c = (*http1).clone();
            c.alpn_protocols = alpn.protocols();
            Arc::new(c)
        };
        let shared = Alpn::ALL.map(|alpn| match alpn {
            Alpn::Http1 => http1.clone(),
            other => with_alpn(other),
        });
        let t = Arc::new(ProfileTls {
            identity: ProfileIdentity(NEXT_IDENTITY.fetch_add(1, Ordering::Relaxed)),
            server_name,
            verifier,
            shared,
            endpoints: Mutex::default(),
            endpoint_capacity: self.options.endpoint_sessions,
            counters: Arc::default(),
            totals: self.totals.clone(),
        });
        self.profiles.insert(key, t.clone());
        Ok(t)
    }

    /// The TLS state for a backend: `Ok(None)` for plain TCP, `Ok(Some)` for TLS, and an
    /// error when TLS is required but unusable (invalid policy, profile that failed to
    /// build, profile of another table): the caller fails closed.
    pub fn resolve(&self, tls: &BackendTls) -> Result<Option<&Arc<ProfileTls>>, BackendTlsError> {
        match tls {
            BackendTls::None => Ok(None),
            BackendTls::Invalid => Err(BackendTlsError::InvalidPolicy),
            BackendTls::Profile(p) => self.profile_of(p).map(Some),
        }
    }

    /// The TLS state of a profile of the table these configs were built from.
    pub fn profile_of(
        &self,
        p: &Arc<BackendTlsProfile>,
    ) -> Result<&Arc<ProfileTls>, BackendTlsError> {
        match self.entries.get(p.id as usize) {
            Some(e) if Arc::ptr_eq(&e.source, p) => {
                e.tls
                    .as_ref()
                    .map_err(|source| BackendTlsError::Unavailable {
                        policy: p.policy.to_string(),
                        source: source.clone(),
                    })
            }
            _ => Err(BackendTlsError::StaleProfile {
                id: p.id,
                policy: p.policy.to_string(),
            }),
        }
    }

    /// Profiles whose configs could not be built, with why (for logs and status).
    pub fn problems(&self) -> impl Iterator<Item = (&BackendTlsProfile, &ProfileBuildError)> {
        self.entries
            .iter()
            .filter_map(|e| e.tls.as_ref().err().map(|err| (&*e.source, err)))
    }

    /// Whether a profile identity is still served by these configs (pooled connections of
    /// an identity that is gone should be retired).
    pub fn is_current(&self, identity: ProfileIdentity) -> bool {
        self.profiles.values().any(|p| p.identity == identity)
    }

    /// Distinct usable profiles, and profiles that could not be built.
    pub fn profile_counts(&self) -> (usize, usize) {
        let unusable = self.problems().count();
        (self.profiles.len(), unusable)
    }

    /// Chains held by the verify caches of these configs.
    pub fn cached_chains(&self) -> usize {
        self.verifiers.values().map(|v| v.cached()).sum()
    }

    /// Process-wide counters, carried from build to build.
    pub fn totals(&self) -> BackendTlsStats {
        self.totals.snapshot()
    }
}

/// The system store, read once per build: SSL_CERT_FILE / SSL_CERT_DIR when set (either
/// replaces the platform's store), else the platform's (openssl-probe locations).
fn load_system_roots() -> Result<Vec<CertificateDer<'static>>, String> {
    let loaded = rustls_native_certs::load_native_certs();
    if !loaded.errors.is_empty() {
        tracing::warn!(
            errors = %loaded.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            loaded = loaded.certs.len(),
            "system trust store: some certificates could not be read"
        );
    }
    if loaded.certs.is_empty() {
        let why = loaded
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(if why.is_empty() {
            "no certificate found".to_string()
        } else {
            why
        });
    }
    Ok(loaded.certs)
}
