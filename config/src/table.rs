//! The compiled, immutable route table and its allocation-free lookups.
//!
//! Built once per (re)load by [`crate::load`]; the dataplane holds it in one `ArcSwap`
//! root. Nothing here allocates on lookup: hosts are lowercased into a stack buffer,
//! exact hosts and exact/prefix paths are hash lookups, wildcards are found by suffix,
//! rules are pre-sorted by Gateway API precedence and regexes are compiled once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use crate::cert::CertifiedKeyDer;
use crate::hostname::{self, HostKey, MAX_HOST};

/// Index of a listener in [`RouteTable::listeners`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub u32);

/// `namespace/name` of an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// Namespace (`default` when the manifest had none).
    pub namespace: Box<str>,
    /// Name.
    pub name: Box<str>,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListenerProtocol {
    /// Plain HTTP/1.1 and h2c.
    Http,
    /// TLS terminated here, then HTTP (ALPN h2, http/1.1).
    Https,
    /// TLS terminated here, then the plain TCP stream goes to a TLSRoute backend.
    TlsTerminate,
    /// TLS not terminated: route by SNI, splice the stream to a TLSRoute backend.
    TlsPassthrough,
}

impl ListenerProtocol {
    /// Does the socket expect a TLS ClientHello first?
    pub fn is_tls(self) -> bool {
        !matches!(self, ListenerProtocol::Http)
    }
}

/// How a listener validates client certificates (Gateway `spec.tls.frontend`).
#[derive(Debug)]
pub struct FrontendValidation {
    /// Trusted CA certificates.
    pub ca_certificates: Vec<CertificateDer<'static>>,
    /// `true` for `AllowInsecureFallback` (ask for a certificate, accept none or an
    /// invalid one), `false` for `AllowValidOnly`.
    pub allow_insecure_fallback: bool,
}

/// One programmed listener of one Gateway.
#[derive(Debug)]
pub struct Listener {
    /// Its id.
    pub id: ListenerId,
    /// The Gateway it belongs to.
    pub gateway: ObjectRef,
    /// `spec.listeners[].name` (the route `sectionName`).
    pub name: Box<str>,
    /// Port.
    pub port: u16,
    /// Protocol and TLS mode.
    pub protocol: ListenerProtocol,
    /// Hostname pattern; `None` is the catch-all.
    pub hostname: Option<Box<str>>,
    /// Certificates to serve (terminating listeners), first valid ref first.
    pub certificates: Vec<Arc<CertifiedKeyDer>>,
    /// Client certificate validation, if configured.
    pub frontend_validation: Option<Arc<FrontendValidation>>,
    /// `spec.listeners[].tls.options` (implementation-specific TLS settings), sorted by key.
    pub tls_options: Box<[(Box<str>, Box<str>)]>,
    pub(crate) http: HostIndex<HttpBucket>,
    pub(crate) grpc: HostIndex<Vec<GrpcEntry>>,
    pub(crate) tls: HostIndex<Arc<TlsTarget>>,
}

impl Listener {
    /// The value of a `tls.options` key.
    pub fn tls_option(&self, key: &str) -> Option<&str> {
        self.tls_options
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .and_then(|i| self.tls_options.get(i))
            .map(|(_, v)| &**v)
    }
}

/// The implementation-specific Gateway address type for an address range: the value is a
/// CIDR (`192.0.2.0/24`, `2001:db8:1::/64`). The Gateway API requires implementation-specific
/// address types to be domain-prefixed; this one uses the domain of gatewayd's default
/// controller name.
pub const CIDR_ADDRESS_TYPE: &str = "gateway.networking.example/CIDR";

/// One socket to listen on: an address and port, with every listener served there.
#[derive(Debug)]
pub struct Bind {
    /// Address and port to bind. For an address range, its first address.
    pub addr: SocketAddr,
    /// `true` when the listeners here expect TLS (HTTPS/TLS), `false` for plain HTTP.
    pub tls: bool,
    /// Every listener served on this socket.
    pub listeners: Box<[ListenerId]>,
    /// `Some(len)` when the bind serves the range `addr/len` (a Gateway address of type
    /// [`CIDR_ADDRESS_TYPE`]): one socket on the range's first address, the rest steered
    /// to it by the kernel (`sk_lookup`); `None` for one address.
    pub prefix_len: Option<u8>,
    pub(crate) selector: HostIndex<ListenerId>,
}

impl Bind {
    /// The destinations the kernel may steer to this bind's socket: its range, or its own
    /// address as a full-length prefix; `None` for the unspecified (wildcard) address,
    /// which the kernel's own lookup serves.
    pub fn steered_prefix(&self) -> Option<(IpAddr, u8)> {
        let ip = self.addr.ip();
        if ip.is_unspecified() && self.prefix_len.is_none() {
            return None;
        }
        let full = if ip.is_ipv4() { 32 } else { 128 };
        Some((ip, self.prefix_len.unwrap_or(full)))
    }
}

/// An entry of the eBPF map plan: a listener address the kernel side must know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EbpfListenerEntry {
    /// Address (unspecified = any local address).
    pub addr: IpAddr,
    /// TCP port.
    pub port: u16,
    /// Protocol of the listeners there (the first listener's, for mixed TLS ports).
    pub protocol: ListenerProtocol,
    /// `true` when the port speaks TLS.
    pub tls: bool,
    /// Index of the [`Bind`] in [`RouteTable::binds`], a stable id within one table.
    pub bind_index: u32,
}

/// Trust roots of a backend TLS profile.
#[derive(Debug)]
pub enum TrustRoots {
    /// CA certificates from `caCertificateRefs`, merged.
    Certificates(Vec<CertificateDer<'static>>),
    /// `wellKnownCACertificates: System`.
    System,
}

/// A `subjectAltNames` entry of a BackendTLSPolicy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SubjectAltName {
    /// DNS SAN to match.
    Hostname(Box<str>),
    /// Exact URI SAN (e.g. `spiffe://...`).
    Uri(Box<str>),
}

/// How to open TLS to a backend: one per distinct (policy, Gateway client certificate).
/// The dataplane builds one rustls `ClientConfig` per profile.
#[derive(Debug)]
pub struct BackendTlsProfile {
    /// Index in [`RouteTable::backend_tls_profiles`].
    pub id: u32,
    /// The BackendTLSPolicy.
    pub policy: ObjectRef,
    /// Trust roots.
    pub roots: TrustRoots,
    /// SNI, and the name to verify when `subject_alt_names` is empty.
    pub hostname: Box<str>,
    /// When non-empty, the certificate must carry one of these; `hostname` is then not
    /// used to authenticate.
    pub subject_alt_names: Vec<SubjectAltName>,
    /// Client certificate from the Gateway's `spec.tls.backend.clientCertificateRef`.
    pub client_certificate: Option<Arc<CertifiedKeyDer>>,
}

/// TLS to a backend.
#[derive(Clone, Debug)]
pub enum BackendTls {
    /// Plain TCP.
    None,
    /// TLS with this profile.
    Profile(Arc<BackendTlsProfile>),
    /// A BackendTLSPolicy targets this backend but is invalid: fail closed, never plain.
    Invalid,
}

/// A resolved Service port: endpoints and protocol.
#[derive(Debug)]
pub struct ServicePort {
    /// The Service.
    pub service: ObjectRef,
    /// The Service port number the route referenced.
    pub port: u16,
    /// The Service port's name (`None` when unnamed).
    pub port_name: Option<Box<str>>,
    /// `appProtocol` of the Service port (`kubernetes.io/h2c`, `kubernetes.io/ws`, ...).
    pub app_protocol: Option<Box<str>>,
    /// Ready endpoints from the EndpointSlices; empty means 503.
    pub endpoints: Box<[SocketAddr]>,
}

/// Why a backendRef cannot be used; the dataplane answers 500.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnresolvedBackend {
    /// Service or port not found.
    NotFound,
    /// Not a core Service.
    InvalidKind,
    /// Cross-namespace without a ReferenceGrant.
    RefNotPermitted,
}

/// A backendRef of a rule.
#[derive(Debug)]
pub struct Backend {
    /// `namespace/name` as referenced.
    pub name: ObjectRef,
    /// Weight (0 gets no traffic).
    pub weight: u32,
    /// Endpoints, or why there are none to use.
    pub target: Result<Arc<ServicePort>, UnresolvedBackend>,
    /// TLS to the backend.
    pub tls: BackendTls,
    /// Filters of `backendRefs[].filters`.
    pub filters: Box<[HttpFilter]>,
}

/// Header modifications (names lowercased).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    /// Replace or add.
    pub set: Vec<(Box<str>, Box<str>)>,
    /// Append as an additional value.
    pub add: Vec<(Box<str>, Box<str>)>,
    /// Remove.
    pub remove: Vec<Box<str>>,
}

/// Path modification of a redirect or rewrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathModifier {
    /// Replace the whole path.
    ReplaceFullPath(Box<str>),
    /// Replace the matched prefix ([`RouteMatch::matched`] tells which).
    ReplacePrefixMatch(Box<str>),
}

/// `RequestRedirect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRedirect {
    /// `http` or `https`.
    pub scheme: Option<Box<str>>,
    /// Hostname.
    pub hostname: Option<Box<str>>,
    /// Port.
    pub port: Option<u16>,
    /// Path.
    pub path: Option<PathModifier>,
    /// 301, 302 (default), 303, 307, 308.
    pub status_code: u16,
}

/// `URLRewrite`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlRewrite {
    /// Host header to send.
    pub hostname: Option<Box<str>>,
    /// Path.
    pub path: Option<PathModifier>,
}

/// `RequestMirror`: send a copy, fire and forget.
#[derive(Debug)]
pub struct RequestMirror {
    /// Where.
    pub backend: Backend,
    /// Fraction of requests mirrored: numerator / denominator.
    pub numerator: u32,
    /// Denominator (100 for `percent`).
    pub denominator: u32,
}

/// A filter of a rule or a backendRef.
#[derive(Debug)]
pub enum HttpFilter {
    /// `RequestHeaderModifier`.
    RequestHeaderModifier(HeaderModifier),
    /// `ResponseHeaderModifier`.
    ResponseHeaderModifier(HeaderModifier),
    /// `RequestRedirect`.
    RequestRedirect(RequestRedirect),
    /// `URLRewrite`.
    UrlRewrite(UrlRewrite),
    /// `RequestMirror`.
    RequestMirror(RequestMirror),
}

/// A string match.
#[derive(Clone, Debug)]
pub enum StringMatch {
    /// Byte equality.
    Exact(Box<str>),
    /// Full match of a regex (compiled once).
    Regex(regex::Regex),
}

impl StringMatch {
    fn is_match(&self, v: &str) -> bool {
        match self {
            StringMatch::Exact(e) => &**e == v,
            StringMatch::Regex(r) => r.is_match(v),
        }
    }
}

/// A path match.
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// Exact path.
    Exact(Box<str>),
    /// Prefix by whole segments; stored without trailing `/` (`/` is stored as ``).
    Prefix(Box<str>),
    /// Full-match regex.
    Regex(regex::Regex),
}

impl PathMatch {
    /// Does `path` match?
    pub fn is_match(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(e) => &**e == path,
            PathMatch::Prefix(p) => prefix_matches(p, path),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// One `matches[]` entry of an HTTPRoute rule.
#[derive(Clone, Debug)]
pub struct HttpMatch {
    /// Path.
    pub path: PathMatch,
    /// Method (upper case).
    pub method: Option<Box<str>>,
    /// Header matches (names lowercased).
    pub headers: Box<[(Box<str>, StringMatch)]>,
    /// Query parameter matches (names exact).
    pub query: Box<[(Box<str>, StringMatch)]>,
}

/// `timeouts` of a rule; `None` = no timeout (absent or `0s`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole exchange, to the end of the response body.
    pub request: Option<Duration>,
    /// Each backend attempt, from its first byte sent until its whole response has been
    /// received.
    pub backend_request: Option<Duration>,
}

/// `retry` of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Status codes to retry.
    pub codes: Box<[u16]>,
    /// Maximum attempts after the first.
    pub attempts: u32,
    /// Backoff between attempts.
    pub backoff: Option<Duration>,
}

/// Which route a rule came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRef {
    /// `HTTPRoute`, `GRPCRoute` or `TLSRoute`.
    pub kind: &'static str,
    /// The route.
    pub route: ObjectRef,
    /// Index of the rule in `spec.rules`.
    pub rule_index: u32,
    /// `spec.rules[].name`.
    pub rule_name: Option<Box<str>>,
}

/// A compiled HTTPRoute rule (per route and Gateway).
#[derive(Debug)]
pub struct HttpRule {
    /// Where it came from.
    pub source: RouteRef,
    /// Its matches.
    pub matches: Box<[HttpMatch]>,
    /// Filters, in order.
    pub filters: Box<[HttpFilter]>,
    /// Backends. Empty (and no redirect) means 500.
    pub backends: Box<[Backend]>,
    /// Sum of backend weights (0: every weight is zero, answer 500).
    pub total_weight: u32,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Retry.
    pub retry: Option<Retry>,
    /// Set when the rule uses something unsupported (e.g. an `ExtensionRef` filter): the
    /// dataplane answers 500 with this reason.
    pub invalid: Option<Box<str>>,
}

/// A GRPCRoute method match.
#[derive(Clone, Debug)]
pub struct GrpcMatch {
    /// Service (`None` = any).
    pub service: Option<StringMatch>,
    /// Method (`None` = any).
    pub method: Option<StringMatch>,
    /// Header matches (names lowercased).
    pub headers: Box<[(Box<str>, StringMatch)]>,
}

/// A compiled GRPCRoute rule.
#[derive(Debug)]
pub struct GrpcRule {
    /// Where it came from.
    pub source: RouteRef,
    /// Matches (empty = match everything).
    pub matches: Box<[GrpcMatch]>,
    /// Filters.
    pub filters: Box<[HttpFilter]>,
    /// Backends.
    pub backends: Box<[Backend]>,
    /// Sum of weights.
    pub total_weight: u32,
    /// Set when the rule uses something unsupported (an `ExtensionRef` filter): the
    /// dataplane answers with this reason, as 500 would be mapped for gRPC clients
    /// (`grpc-status: 13`, INTERNAL).
    pub invalid: Option<Box<str>>,
}

/// Where a TLSRoute sends a connection.
#[derive(Debug)]
pub struct TlsTarget {
    /// Where it came from.
    pub source: RouteRef,
    /// Backends.
    pub backends: Box<[Backend]>,
    /// Sum of weights.
    pub total_weight: u32,
}

/// The result of an HTTP lookup.
#[derive(Clone, Copy, Debug)]
pub struct RouteMatch<'t> {
    /// The listener the Host selected.
    pub listener: &'t Listener,
    /// The matched rule.
    pub rule: &'t HttpRule,
    /// The match entry that matched (for `ReplacePrefixMatch`).
    pub matched: &'t HttpMatch,
}

/// The result of a gRPC lookup.
#[derive(Clone, Copy, Debug)]
pub struct GrpcRouteMatch<'t> {
    /// The listener the authority selected.
    pub listener: &'t Listener,
    /// The matched rule.
    pub rule: &'t GrpcRule,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) rule: u32,
    pub(crate) matched: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GrpcEntry {
    pub(crate) rule: u32,
    /// `u32::MAX` for a rule without matches.
    pub(crate) matched: u32,
}

/// Rules of one hostname of one listener, split by path kind.
#[derive(Debug, Default)]
pub(crate) struct HttpBucket {
    pub(crate) exact: HashMap<Box<str>, Vec<Entry>>,
    pub(crate) regex: Vec<Entry>,
    pub(crate) prefix: HashMap<Box<str>, Vec<Entry>>,
}

/// hostname -> T: exact hosts in a hash map, wildcards by suffix, then the catch-all.
#[derive(Debug)]
pub(crate) struct HostIndex<T> {
    pub(crate) exact: HashMap<Box<str>, T>,
    pub(crate) wildcard: HashMap<Box<str>, T>,
    pub(crate) any: Option<T>,
}

impl<T> Default for HostIndex<T> {
    fn default() -> Self {
        HostIndex {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            any: None,
        }
    }
}

impl<T> HostIndex<T> {
    pub(crate) fn get_or_insert_with(&mut self, key: &HostKey, f: impl FnOnce() -> T) -> &mut T {
        match key {
            HostKey::Any => self.any.get_or_insert_with(f),
            HostKey::Exact(h) => self.exact.entry(h.clone()).or_insert_with(f),
            HostKey::Wildcard(s) => self.wildcard.entry(s.clone()).or_insert_with(f),
        }
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.exact
            .values_mut()
            .chain(self.wildcard.values_mut())
            .chain(self.any.iter_mut())
    }

    /// Candidates for a normalised host, most specific first: exact, then wildcards from
    /// the longest suffix, then the catch-all.
    pub(crate) fn candidates<'a, 'h>(&'a self, host: &'h str) -> Candidates<'a, 'h, T> {
        Candidates {
            index: self,
            host,
            state: CandState::Exact,
        }
    }

    /// The most specific entry for a host.
    pub(crate) fn best(&self, host: &str) -> Option<&T> {
        self.candidates(host).next()
    }
}

#[derive(Clone, Copy)]
enum CandState {
    Exact,
    /// Next byte offset to search for a `.` from.
    Wildcard(usize),
    Any,
    Done,
}

pub(crate) struct Candidates<'a, 'h, T> {
    index: &'a HostIndex<T>,
    host: &'h str,
    state: CandState,
}

impl<'a, T> Iterator for Candidates<'a, '_, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        loop {
            match self.state {
                CandState::Exact => {
                    self.state = CandState::Wildcard(0);
                    if let Some(v) = self.index.exact.get(self.host) {
                        return Some(v);
                    }
                }
                CandState::Wildcard(from) => {
                    if self.index.wildcard.is_empty() {
                        self.state = CandState::Any;
                        continue;
                    }
                    // A wildcard needs at least one label before its suffix, so the
                    // suffix starts at a dot after the first character.
                    match self.host[from..].find('.') {
                        Some(i) if from + i > 0 => {
                            let at = from + i;
                            self.state = CandState::Wildcard(at + 1);
                            if let Some(v) = self.index.wildcard.get(&self.host[at..]) {
                                return Some(v);
                            }
                        }
                        Some(i) => self.state = CandState::Wildcard(from + i + 1),
                        None => self.state = CandState::Any,
                    }
                }
                CandState::Any => {
                    self.state = CandState::Done;
                    if let Some(v) = &self.index.any {
                        return Some(v);
                    }
                }
                CandState::Done => return None,
            }
        }
    }
}

/// The compiled route table.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub(crate) binds: Vec<Bind>,
    pub(crate) listeners: Vec<Listener>,
    pub(crate) http_rules: Vec<HttpRule>,
    pub(crate) grpc_rules: Vec<GrpcRule>,
    pub(crate) profiles: Vec<Arc<BackendTlsProfile>>,
    pub(crate) ebpf: Vec<EbpfListenerEntry>,
}

impl RouteTable {
    /// Every socket to listen on.
    pub fn binds(&self) -> &[Bind] {
        &self.binds
    }

    /// The bind serving a local address: the exact address first, then the unspecified
    /// address of the same family and port.
    pub fn bind_for(&self, local: SocketAddr) -> Option<&Bind> {
        self.binds.iter().find(|b| b.addr == local).or_else(|| {
            self.binds.iter().find(|b| {
                b.addr.port() == local.port()
                    && b.addr.ip().is_unspecified()
                    && b.addr.is_ipv4() == local.is_ipv4()
            })
        })
    }

    /// Every programmed listener; [`ListenerId`] indexes this slice.
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// A listener by id.
    pub fn listener(&self, id: ListenerId) -> Option<&Listener> {
        self.listeners.get(id.0 as usize)
    }

    /// Every backend TLS profile (one rustls `ClientConfig` each).
    pub fn backend_tls_profiles(&self) -> &[Arc<BackendTlsProfile>] {
        &self.profiles
    }

    /// The eBPF map plan: every listener address and port.
    pub fn ebpf_plan(&self) -> &[EbpfListenerEntry] {
        &self.ebpf
    }

    /// The listener of a bind that serves a Host or SNI: the most specific hostname wins
    /// (exact, then the longest wildcard, then a listener without hostname); only that
    /// listener serves the request (listener isolation). `None` host (no SNI) selects the
    /// catch-all listener.
    pub fn select_listener(&self, bind: &Bind, host: Option<&str>) -> Option<&Listener> {
        let id = match host {
            None => bind.selector.any.as_ref(),
            Some(host) => {
                let mut buf = [0u8; MAX_HOST];
                let h = hostname::normalize(host, &mut buf)?;
                bind.selector.best(h)
            }
        }?;
        self.listener(*id)
    }

    /// Route an HTTP request: select the listener by `host` (port ignored), then the
    /// first rule in Gateway API precedence whose match accepts the request. `path`
    /// excludes the query; `query` is the raw query string (no `?`); `headers` returns the
    /// first value of a header by lowercase name. Allocates nothing.
    pub fn route_http<'h, H>(
        &self,
        bind: &Bind,
        host: &str,
        method: &str,
        path: &str,
        query: &str,
        headers: H,
    ) -> Option<RouteMatch<'_>>
    where
        H: Fn(&str) -> Option<&'h str>,
    {
        let mut buf = [0u8; MAX_HOST];
        let h = hostname::normalize(host, &mut buf)?;
        let listener = self.listener(*bind.selector.best(h)?)?;
        let req = Request {
            method,
            path,
            query,
            headers: &headers,
        };
        for bucket in listener.http.candidates(h) {
            if let Some((rule, matched)) = self.match_bucket(bucket, &req) {
                return Some(RouteMatch {
                    listener,
                    rule,
                    matched,
                });
            }
        }
        None
    }

    fn match_bucket<'t>(
        &'t self,
        bucket: &'t HttpBucket,
        req: &Request<'_, '_>,
    ) -> Option<(&'t HttpRule, &'t HttpMatch)> {
        let try_entries = |entries: &'t [Entry], check_path: bool| {
            entries.iter().find_map(|e| {
                let rule = self.http_rules.get(e.rule as usize)?;
                let m = rule.matches.get(e.matched as usize)?;
                (req.accepts(m, check_path)).then_some((rule, m))
            })
        };
        if let Some(entries) = bucket.exact.get(req.path) {
            if let Some(hit) = try_entries(entries, false) {
                return Some(hit);
            }
        }
        if !bucket.regex.is_empty() {
            if let Some(hit) = try_entries(&bucket.regex, true) {
                return Some(hit);
            }
        }
        if bucket.prefix.is_empty() {
            return None;
        }
        // Candidate prefixes at segment boundaries, longest first.
        let trimmed = req.path.trim_end_matches('/');
        let mut end = trimmed.len();
        loop {
            let candidate = &trimmed[..end];
            if let Some(entries) = bucket.prefix.get(candidate) {
                if let Some(hit) = try_entries(entries, false) {
                    return Some(hit);
                }
            }
            if end == 0 {
                return None;
            }
            end = candidate.rfind('/').unwrap_or(0);
        }
    }

    /// Route a gRPC request (`service`/`method` from the `:path` `/service/method`).
    pub fn route_grpc<'h, H>(
        &self,
        bind: &Bind,
        authority: &str,
        service: &str,
        method: &str,
        headers: H,
    ) -> Option<GrpcRouteMatch<'_>>
    where
        H: Fn(&str) -> Option<&'h str>,
    {
        let mut buf = [0u8; MAX_HOST];
        let h = hostname::normalize(authority, &mut buf)?;
        let listener = self.listener(*bind.selector.best(h)?)?;
        for entries in listener.grpc.candidates(h) {
            for e in entries {
                let Some(rule) = self.grpc_rules.get(e.rule as usize) else {
                    continue;
                };
                let ok = match rule.matches.get(e.matched as usize) {
                    None => true,
                    Some(m) => {
                        m.service.as_ref().is_none_or(|s| s.is_match(service))
                            && m.method.as_ref().is_none_or(|s| s.is_match(method))
                            && m.headers
                                .iter()
                                .all(|(n, v)| headers(n).is_some_and(|x| v.is_match(x)))
                    }
                };
                if ok {
                    return Some(GrpcRouteMatch { listener, rule });
                }
            }
        }
        None
    }

    /// The TLSRoute target for an SNI on a TLS listener (exact beats wildcard).
    pub fn route_tls<'t>(&self, listener: &'t Listener, sni: &str) -> Option<&'t TlsTarget> {
        let mut buf = [0u8; MAX_HOST];
        let h = hostname::normalize(sni, &mut buf)?;
        listener.tls.best(h).map(|t| &**t)
    }

    /// The certificates to present for an SNI on a bind: those of the listener the SNI
    /// selects (a listener without hostname is the catch-all).
    pub fn certificates_for(
        &self,
        bind: &Bind,
        sni: Option<&str>,
    ) -> Option<&[Arc<CertifiedKeyDer>]> {
        let l = self.select_listener(bind, sni)?;
        (!l.certificates.is_empty()).then_some(&l.certificates[..])
    }
}

struct Request<'r, 'h> {
    method: &'r str,
    path: &'r str,
    query: &'r str,
    headers: &'r dyn Fn(&str) -> Option<&'h str>,
}

impl Request<'_, '_> {
    fn accepts(&self, m: &HttpMatch, check_path: bool) -> bool {
        (!check_path || m.path.is_match(self.path))
            && m.method.as_deref().is_none_or(|x| x == self.method)
            && m.headers
                .iter()
                .all(|(n, v)| (self.headers)(n).is_some_and(|x| v.is_match(x)))
            && m.query
                .iter()
                .all(|(n, v)| query_param(self.query, n).is_some_and(|x| v.is_match(x)))
    }
}

/// First value of a query parameter (raw, not percent-decoded).
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}
