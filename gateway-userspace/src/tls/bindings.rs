//! Per compiled table: the rustls `ServerConfig`s of every TLS bind.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use gateway_config::{
    Bind, CertifiedKeyDer, FrontendValidation, Listener, ListenerId, ListenerProtocol, ObjectRef,
    RouteTable,
};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::resumption::Scope;
use super::{
    frontend, provider, SessionResumption, HTTP_ALPN, PROTOCOL_VERSIONS, SESSION_RESUMPTION_OPTIONS,
};

/// Why part of a listener's TLS could not be built. The listener's other certificates
/// still serve; a listener left without a usable certificate or verifier fails its
/// handshakes (closed, never served without the validation it asks for).
#[derive(Debug, thiserror::Error)]
pub enum TlsBuildError {
    /// The private key cannot be loaded or does not match the leaf certificate.
    #[error("certificate of Secret {secret} is unusable: {source}")]
    Key {
        /// `namespace/name` of the Secret.
        secret: String,
        /// The rustls error (`InconsistentKeys`, unsupported key type, ...).
        #[source]
        source: rustls::Error,
    },
    /// No CA certificate of the frontend validation could be used as a trust anchor.
    #[error("no usable CA certificate for client validation ({ignored} ignored)")]
    NoUsableCa {
        /// Certificates that could not be parsed as trust anchors.
        ignored: usize,
    },
    /// The client certificate verifier could not be built.
    #[error("client certificate verifier: {source}")]
    Verifier {
        /// The rustls error.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// The protocol versions are not supported by the provider (a build invariant).
    #[error("TLS config: {source}")]
    Config {
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// A `tls.options` value we do not understand; the default applies.
    #[error("tls.options {key}: {value:?} is neither \"on\" nor \"off\"; resumption stays on")]
    BadOption {
        /// The option key.
        key: &'static str,
        /// The value found.
        value: Box<str>,
    },
}

/// A [`TlsBuildError`] with the listener it concerns.
#[derive(Debug)]
pub struct TlsProblem {
    /// The listener.
    pub listener: ListenerId,
    /// Its Gateway.
    pub gateway: ObjectRef,
    /// Its name.
    pub listener_name: Box<str>,
    /// What went wrong.
    pub error: TlsBuildError,
}

impl fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Gateway {} listener {}: {}",
            self.gateway, self.listener_name, self.error
        )
    }
}

/// The TLS server side of one compiled table: per TLS bind, the configs of its
/// terminating listeners. Immutable; a reload builds new ones.
pub struct TlsBindings {
    table: Arc<RouteTable>,
    /// Indexed like `table.binds()`; `None` for plain-HTTP and passthrough-only binds.
    binds: Box<[Option<BindTls>]>,
    problems: Vec<TlsProblem>,
}

impl fmt::Debug for TlsBindings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsBindings")
            .field("binds", &self.binds)
            .field("problems", &self.problems)
            .finish_non_exhaustive()
    }
}

/// The configs of one TLS bind.
pub struct BindTls {
    /// One per distinct TLS policy of the bind's terminating listeners.
    configs: Box<[Arc<ServerConfig>]>,
    /// Terminating listener -> index in `configs`, sorted by listener id.
    listeners: Box<[(ListenerId, usize)]>,
}

impl fmt::Debug for BindTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BindTls")
            .field("configs", &self.configs.len())
            .field("listeners", &self.listeners)
            .finish()
    }
}

impl BindTls {
    /// The one config of the bind, when all its terminating listeners share a policy
    /// (the usual case): usable with a plain `tokio_rustls::TlsAcceptor`, its
    /// certificate resolver choosing by SNI across the listeners.
    pub fn server_config(&self) -> Option<&Arc<ServerConfig>> {
        match &*self.configs {
            [one] if self.listeners.iter().all(|(_, i)| *i == 0) => Some(one),
            _ => None,
        }
    }

    /// The config of a terminating listener of this bind (`None`: not terminating here,
    /// or its config failed to build and it must not serve).
    pub fn config_for(&self, listener: ListenerId) -> Option<&Arc<ServerConfig>> {
        let i = self
            .listeners
            .binary_search_by_key(&listener, |(id, _)| *id)
            .ok()?;
        let (_, c) = self.listeners.get(i)?;
        self.configs.get(*c)
    }

    /// Every config of the bind.
    pub fn configs(&self) -> &[Arc<ServerConfig>] {
        &self.configs
    }
}

impl TlsBindings {
    /// Build every config of a compiled table. Never fails as a whole: what cannot be
    /// built is listed in [`problems`](Self::problems) and fails closed.
    pub fn build(table: Arc<RouteTable>, sessions: &SessionResumption) -> TlsBindings {
        let provider = provider();
        let mut problems = Vec::new();
        let keys = certified_keys(&table, &provider, &mut problems);
        let mut binds = Vec::with_capacity(table.binds().len());
        for (index, bind) in table.binds().iter().enumerate() {
            binds.push(bind.tls.then(|| {
                build_bind(
                    &table,
                    index,
                    bind,
                    &keys,
                    sessions,
                    &provider,
                    &mut problems,
                )
            }));
        }
        let binds = binds
            .into_iter()
            .map(|b| b.filter(|b: &BindTls| !b.listeners.is_empty()))
            .collect();
        TlsBindings {
            table,
            binds,
            problems,
        }
    }

    /// The table these configs were built from: use it (not another snapshot's) for
    /// listener selection and the misdirected-request check.
    pub fn table(&self) -> &Arc<RouteTable> {
        &self.table
    }

    /// The configs of the bind at `index` in `table().binds()`.
    pub fn get(&self, index: usize) -> Option<&BindTls> {
        self.binds.get(index)?.as_ref()
    }

    /// The index in `table().binds()` of the bind with this configured address.
    pub fn bind_index(&self, addr: SocketAddr) -> Option<usize> {
        self.table.binds().iter().position(|b| b.addr == addr)
    }

    /// What could not be built (log it; the listeners concerned fail closed).
    pub fn problems(&self) -> &[TlsProblem] {
        &self.problems
    }
}

fn terminates(l: &Listener) -> bool {
    matches!(
        l.protocol,
        ListenerProtocol::Https | ListenerProtocol::TlsTerminate
    )
}

fn problem(l: &Listener, error: TlsBuildError) -> TlsProblem {
    TlsProblem {
        listener: l.id,
        gateway: l.gateway.clone(),
        listener_name: l.name.clone(),
        error,
    }
}

/// Every terminating listener's `CertifiedKey`s, each Secret loaded once per table.
fn certified_keys(
    table: &RouteTable,
    provider: &CryptoProvider,
    problems: &mut Vec<TlsProblem>,
) -> HashMap<ListenerId, Arc<[Arc<CertifiedKey>]>> {
    let mut by_secret: HashMap<&str, Result<Arc<CertifiedKey>, rustls::Error>> = HashMap::new();
    let mut out = HashMap::new();
    for l in table.listeners().iter().filter(|l| terminates(l)) {
        let mut keys = Vec::with_capacity(l.certificates.len());
        for der in &l.certificates {
            let loaded = by_secret
                .entry(der.source.as_str())
                .or_insert_with(|| load_key(der, provider));
            match loaded {
                Ok(k) => keys.push(k.clone()),
                Err(e) => problems.push(problem(
                    l,
                    TlsBuildError::Key {
                        secret: der.source.clone(),
                        source: e.clone(),
                    },
                )),
            }
        }
        out.insert(l.id, keys.into());
    }
    out
}

fn load_key(
    der: &CertifiedKeyDer,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, rustls::Error> {
    CertifiedKey::from_der(der.chain.clone(), der.key.clone_key(), provider).map(Arc::new)
}

/// What makes two listeners need different `ServerConfig`s.
struct Policy<'t> {
    http: bool,
    resumption: bool,
    frontend: Option<&'t FrontendValidation>,
}

impl Policy<'_> {
    fn same(&self, other: &Policy<'_>) -> bool {
        self.http == other.http
            && self.resumption == other.resumption
            && match (self.frontend, other.frontend) {
                (None, None) => true,
                (Some(a), Some(b)) => {
                    a.allow_insecure_fallback == b.allow_insecure_fallback
                        && a.ca_certificates == b.ca_certificates
                }
                _ => false,
            }
    }
}

fn resumption_enabled(l: &Listener, problems: &mut Vec<TlsProblem>) -> bool {
    for key in SESSION_RESUMPTION_OPTIONS {
        match l.tls_option(key) {
            None => {}
            Some(v) if v.eq_ignore_ascii_case("off") => return false,
            Some(v) if v.eq_ignore_ascii_case("on") => return true,
            Some(v) => problems.push(problem(
                l,
                TlsBuildError::BadOption {
                    key,
                    value: v.into(),
                },
            )),
        }
    }
    true
}

fn build_bind(
    table: &Arc<RouteTable>,
    index: usize,
    bind: &Bind,
    keys: &HashMap<ListenerId, Arc<[Arc<CertifiedKey>]>>,
    sessions: &SessionResumption,
    provider: &Arc<CryptoProvider>,
    problems: &mut Vec<TlsProblem>,
) -> BindTls {
    let resolver = Arc::new(SniResolver {
        table: table.clone(),
        bind: index,
        keys: bind
            .listeners
            .iter()
            .filter_map(|id| Some((*id, keys.get(id)?.clone())))
            .collect(),
    });
    let mut policies: Vec<(Policy<'_>, Option<usize>)> = Vec::new();
    let mut configs = Vec::new();
    let mut listeners = Vec::new();
    for l in bind
        .listeners
        .iter()
        .filter_map(|id| table.listener(*id))
        .filter(|l| terminates(l))
    {
        let policy = Policy {
            http: l.protocol == ListenerProtocol::Https,
            resumption: resumption_enabled(l, problems),
            frontend: l.frontend_validation.as_deref(),
        };
        let config = match policies.iter().find(|(p, _)| p.same(&policy)) {
            Some((_, built)) => *built,
            None => {
                let built = match server_config(&policy, resolver.clone(), sessions, provider) {
                    Ok(c) => {
                        configs.push(Arc::new(c));
                        Some(configs.len() - 1)
                    }
                    Err(e) => {
                        problems.push(problem(l, e));
                        None
                    }
                };
                policies.push((policy, built));
                built
            }
        };
        if let Some(c) = config {
            listeners.push((l.id, c));
        }
    }
    listeners.sort_unstable();
    BindTls {
        configs: configs.into(),
        listeners: listeners.into(),
    }
}

fn server_config(
    policy: &Policy<'_>,
    resolver: Arc<SniResolver>,
    sessions: &SessionResumption,
    provider: &Arc<CryptoProvider>,
) -> Result<ServerConfig, TlsBuildError> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|source| TlsBuildError::Config { source })?;
    let builder = match policy.frontend {
        Some(f) => builder.with_client_cert_verifier(frontend::client_verifier(f, provider)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.ignore_client_order = true;
    if policy.http {
        config.alpn_protocols = HTTP_ALPN.iter().map(|p| p.to_vec()).collect();
    }
    if policy.resumption {
        let (ticketer, cache) = sessions.scoped(Scope::of(policy.frontend));
        config.ticketer = ticketer;
        config.session_storage = cache;
    } else {
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(config)
}

/// Picks the certificate by SNI across all terminating listeners of one bind, with the
/// table's listener selection (what `RouteTable::certificates_for` returns).
struct SniResolver {
    table: Arc<RouteTable>,
    bind: usize,
    keys: HashMap<ListenerId, Arc<[Arc<CertifiedKey>]>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("bind", &self.bind)
            .field("listeners", &self.keys.len())
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let bind = self.table.binds().get(self.bind)?;
        let listener = self.table.select_listener(bind, hello.server_name())?;
        match &**self.keys.get(&listener.id)? {
            [] => None,
            [one] => Some(one.clone()),
            // Several certificateRefs (e.g. RSA and ECDSA): the first the client can
            // verify, else the first (rustls then fails the handshake cleanly).
            keys @ [first, ..] => Some(
                keys.iter()
                    .find(|k| k.key.choose_scheme(hello.signature_schemes()).is_some())
                    .unwrap_or(first)
                    .clone(),
            ),
        }
    }
}
