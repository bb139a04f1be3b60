//! Resolve and compile: typed manifests -> Gateway API status + [`RouteTable`].
//!
//! One pass, in the order the spec's dependencies impose: Gateways and their listeners
//! (addresses, protocols, TLS refs, conflicts), BackendTLSPolicies (conflicts, CA refs),
//! then routes (attachment, hostname intersection, backend refs) compiled into the table,
//! and last the statuses, which need the attachment counts and policy ancestors.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use gateway_api::backendtlspolicies::{
    BackendTlsPolicy, BackendTlsPolicyStatus, BackendTlsPolicyStatusAncestors,
    BackendTlsPolicyStatusAncestorsAncestorRef, BackendTlsPolicyValidationSubjectAltNamesType,
};
use gateway_api::experimental::gateways::{
    Gateway, GatewayListenersAllowedRoutesNamespacesFrom as From_, GatewayListenersTlsMode,
    GatewayStatus, GatewayStatusAddresses, GatewayStatusListeners,
    GatewayStatusListenersSupportedKinds, GatewayTlsFrontendDefaultValidationMode,
    GatewayTlsFrontendPerPortTlsValidationMode,
};
use gateway_api::experimental::grpcroutes::{
    GrpcRoute, GrpcRouteRules, GrpcRouteRulesMatches, GrpcRouteRulesMatchesHeadersType,
    GrpcRouteRulesMatchesMethodType, GrpcRouteStatus, GrpcRouteStatusParents,
    GrpcRouteStatusParentsParentRef,
};
use gateway_api::experimental::httproutes::{
    HttpRoute, HttpRouteRulesFilters,
    HttpRouteRulesFiltersRequestRedirectPathType as RedirectPathType,
    HttpRouteRulesFiltersRequestRedirectScheme, HttpRouteRulesFiltersType,
    HttpRouteRulesFiltersUrlRewritePathType as RewritePathType, HttpRouteRulesMatches,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesMethod, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType, HttpRouteStatus, HttpRouteStatusParents,
    HttpRouteStatusParentsParentRef,
};
use gateway_api::experimental::tlsroutes::{
    TlsRouteStatus, TlsRouteStatusParents, TlsRouteStatusParentsParentRef,
};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use crate::cert::{self, CertifiedKeyDer};
use crate::hostname::{self, HostKey};
use crate::manifest::Manifests;
use crate::status::{conditions, Cond, ObjectStatus, StatusItem, StatusMetadata, StatusReport};
use crate::table::*;
use crate::CompileOptions;

const GROUP: &str = "gateway.networking.k8s.io";
const API_VERSION: &str = "gateway.networking.k8s.io/v1";
/// The largest backendRef weight the CRD allows.
const MAX_WEIGHT: u32 = 1_000_000;

fn ns_of(m: &ObjectMeta) -> &str {
    m.namespace
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
}
fn name_of(m: &ObjectMeta) -> &str {
    m.name.as_deref().unwrap_or("")
}
fn gen_of(m: &ObjectMeta) -> i64 {
    m.generation.unwrap_or(1)
}
fn created_of(m: &ObjectMeta) -> Option<Timestamp> {
    m.creation_timestamp.as_ref().map(|t| t.0)
}
fn oref(ns: &str, name: &str) -> ObjectRef {
    ObjectRef {
        namespace: ns.into(),
        name: name.into(),
    }
}
/// Age order: older `creationTimestamp` first (absent sorts last), then `namespace/name`.
fn age_key(m: &ObjectMeta) -> (bool, Option<Timestamp>, String, String) {
    let c = created_of(m);
    (c.is_none(), c, ns_of(m).to_string(), name_of(m).to_string())
}
fn is_core(group: Option<&str>) -> bool {
    matches!(group, None | Some("") | Some("core"))
}

/// A reference's kind as messages name it: `ConfigMap` in the core group (whose name is
/// empty), `example.com/Service` in another.
fn group_kind(group: Option<&str>, kind: &str) -> String {
    match group {
        Some(group) if !is_core(Some(group)) => format!("{group}/{kind}"),
        _ => kind.to_owned(),
    }
}

/// A route kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum RouteKind {
    Http,
    Grpc,
    Tls,
}

impl RouteKind {
    fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Tls => "TLSRoute",
        }
    }
}

/// Index of the core objects by namespace/name.
struct Index<'m> {
    m: &'m Manifests,
    namespaces: HashMap<&'m str, BTreeMap<String, String>>,
    services: HashMap<(&'m str, &'m str), &'m Service>,
    slices: HashMap<(&'m str, &'m str), Vec<usize>>,
    secrets: HashMap<(&'m str, &'m str), usize>,
    config_maps: HashMap<(&'m str, &'m str), usize>,
}

impl<'m> Index<'m> {
    fn new(m: &'m Manifests) -> Self {
        let mut namespaces = HashMap::new();
        for n in &m.namespaces {
            let mut labels = n.obj.metadata.labels.clone().unwrap_or_default();
            let name = name_of(&n.obj.metadata);
            labels
                .entry("kubernetes.io/metadata.name".to_string())
                .or_insert_with(|| name.to_string());
            namespaces.insert(name, labels);
        }
        let services = m
            .services
            .iter()
            .map(|s| ((ns_of(&s.obj.metadata), name_of(&s.obj.metadata)), &s.obj))
            .collect();
        let mut slices: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (i, s) in m.endpoint_slices.iter().enumerate() {
            let svc = s
                .obj
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"));
            if let Some(svc) = svc {
                slices
                    .entry((ns_of(&s.obj.metadata), svc.as_str()))
                    .or_default()
                    .push(i);
            }
        }
        let secrets = m
            .secrets
            .iter()
            .enumerate()
            .map(|(i, s)| ((ns_of(&s.obj.metadata), name_of(&s.obj.metadata)), i))
            .collect();
        let config_maps = m
            .config_maps
            .iter()
            .enumerate()
            .map(|(i, s)| ((ns_of(&s.obj.metadata), name_of(&s.obj.metadata)), i))
            .collect();
        Index {
            m,
            namespaces,
            services,
            slices,
            secrets,
            config_maps,
        }
    }

    /// ReferenceGrant check for a reference from (`from_group`, `from_kind`, `from_ns`) to
    /// (`to_group`, `to_kind`, `to_ns`/`to_name`).
    fn permitted(&self, from: (&str, &str, &str), to: (&str, &str, &str, &str)) -> bool {
        let (fg, fk, fns) = from;
        let (tg, tk, tns, tname) = to;
        if fns == tns {
            return true;
        }
        fn core(g: &str) -> &str {
            if g == "core" {
                ""
            } else {
                g
            }
        }
        self.m.reference_grants.iter().any(|g| {
            ns_of(&g.obj.metadata) == tns
                && g.obj
                    .spec
                    .from
                    .iter()
                    .any(|f| core(&f.group) == core(fg) && f.kind == fk && f.namespace == fns)
                && g.obj.spec.to.iter().any(|t| {
                    core(&t.group) == core(tg)
                        && t.kind == tk
                        && t.name.as_deref().is_none_or(|n| n.is_empty() || n == tname)
                })
        })
    }

    fn secret_bytes(&self, ns: &str, name: &str, key: &str) -> Option<Option<Vec<u8>>> {
        let s = &self.m.secrets.get(*self.secrets.get(&(ns, name))?)?.obj;
        let v = s
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .or_else(|| {
                s.string_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|v| v.as_bytes().to_vec())
            });
        Some(v)
    }

    fn config_map_bytes(&self, ns: &str, name: &str, key: &str) -> Option<Option<Vec<u8>>> {
        let c = &self
            .m
            .config_maps
            .get(*self.config_maps.get(&(ns, name))?)?
            .obj;
        let v = c
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| v.as_bytes().to_vec())
            .or_else(|| {
                c.binary_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|b| b.0.clone())
            });
        Some(v)
    }

    /// A Secret as a TLS certificate and key.
    fn tls_secret(&self, ns: &str, name: &str) -> Result<CertifiedKeyDer, String> {
        let crt = self
            .secret_bytes(ns, name, "tls.crt")
            .ok_or_else(|| format!("Secret {ns}/{name} not found"))?
            .ok_or_else(|| format!("Secret {ns}/{name} has no tls.crt"))?;
        let key = self
            .secret_bytes(ns, name, "tls.key")
            .flatten()
            .ok_or_else(|| format!("Secret {ns}/{name} has no tls.key"))?;
        cert::parse_key_pair(&crt, &key, format!("{ns}/{name}"))
            .map_err(|e| format!("Secret {ns}/{name}: {e}"))
    }

    fn ns_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces.get(ns).cloned().unwrap_or_else(|| {
            BTreeMap::from([("kubernetes.io/metadata.name".to_string(), ns.to_string())])
        })
    }
}

/// Label selector (matchLabels + matchExpressions).
#[derive(Clone, Debug, Default)]
struct Selector {
    labels: BTreeMap<String, String>,
    exprs: Vec<(String, String, Vec<String>)>,
}

impl Selector {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.exprs.iter().all(|(k, op, vals)| match op.as_str() {
                "In" => labels.get(k).is_some_and(|v| vals.contains(v)),
                "NotIn" => labels.get(k).is_none_or(|v| !vals.contains(v)),
                "Exists" => labels.contains_key(k),
                "DoesNotExist" => !labels.contains_key(k),
                _ => false,
            })
    }
}

#[derive(Clone, Debug)]
enum AllowedNs {
    Same,
    All,
    Selector(Selector),
}

/// A listener being resolved.
struct LState {
    name: String,
    port: u16,
    protocol: Option<ListenerProtocol>,
    hostname: Option<String>,
    kinds: Vec<RouteKind>,
    allowed_ns: AllowedNs,
    accepted: Cond,
    resolved: Cond,
    conflicted: Cond,
    /// Another terminating listener on the port has an overlapping hostname.
    overlapping_tls: bool,
    certs: Vec<Arc<CertifiedKeyDer>>,
    frontend: Option<Arc<FrontendValidation>>,
    tls_options: Box<[(Box<str>, Box<str>)]>,
    attached: BTreeSet<(RouteKind, usize)>,
    /// Effective hostnames of each HTTPRoute/GRPCRoute attached here, in attachment
    /// (age) order, for the cross-serving rule.
    served_hosts: Vec<(RouteKind, Vec<Option<String>>)>,
    id: Option<ListenerId>,
}

impl LState {
    fn programmed(&self) -> bool {
        self.accepted.ok && !self.conflicted.ok && self.protocol.is_some() && {
            // An invalid certificate ref on a terminating listener with no valid
            // certificate leaves it unable to serve.
            !matches!(
                self.protocol,
                Some(ListenerProtocol::Https | ListenerProtocol::TlsTerminate)
            ) || !self.certs.is_empty()
        }
    }
}

/// A Gateway address: one IP address, or a range (CIDR) served through its first address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GwAddr {
    ip: IpAddr,
    /// `Some(len)` for a [`CIDR_ADDRESS_TYPE`] range `ip/len`.
    prefix_len: Option<u8>,
}

impl GwAddr {
    fn ip(ip: IpAddr) -> Self {
        GwAddr {
            ip,
            prefix_len: None,
        }
    }

    /// `type` and `value` as the Gateway status lists them.
    fn status(&self) -> GatewayStatusAddresses {
        match self.prefix_len {
            None => GatewayStatusAddresses {
                r#type: Some("IPAddress".to_string()),
                value: self.ip.to_string(),
            },
            Some(len) => GatewayStatusAddresses {
                r#type: Some(CIDR_ADDRESS_TYPE.to_string()),
                value: format!("{}/{len}", self.ip),
            },
        }
    }
}

/// A [`CIDR_ADDRESS_TYPE`] value: `address/length`, host bits clear, not the whole address
/// space (that is what a Gateway without addresses gets, through the wildcard).
fn parse_cidr(value: &str) -> Result<GwAddr, String> {
    let bad = || format!("{value:?} is not a CIDR (address/prefix length)");
    let (addr, len) = value.split_once('/').ok_or_else(bad)?;
    let ip = IpAddr::from_str(addr).map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    if len == 0 || u32::from(len) > bits {
        return Err(format!(
            "{value:?}: the prefix length must be 1 to {bits} (a Gateway without addresses listens on every local address)"
        ));
    }
    let network = match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(
            u32::from(v4) & (u32::MAX << (32 - u32::from(len))),
        )),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(
            u128::from(v6) & (u128::MAX << (128 - u32::from(len))),
        )),
    };
    if network != ip {
        return Err(format!(
            "{value:?} has host bits set: the range is {network}/{len}"
        ));
    }
    Ok(GwAddr {
        ip,
        prefix_len: Some(len),
    })
}

/// A bind while listeners are assigned: TLS or not, its listeners, the hostname selector,
/// and the range it serves (`Some(len)`) or not.
type BindPlan = (bool, Vec<ListenerId>, HostIndex<ListenerId>, Option<u8>);

struct GState<'m> {
    gw: &'m Gateway,
    ns: &'m str,
    name: &'m str,
    generation: i64,
    addrs: Vec<GwAddr>,
    accepted: Cond,
    resolved: Option<Cond>,
    client_cert: Option<Arc<CertifiedKeyDer>>,
    listeners: Vec<LState>,
}

/// Outcome of BackendTLSPolicies for one Service port.
#[derive(Clone, Debug)]
enum PolicyUse {
    Valid(usize),
    Invalid(usize),
}

struct PState {
    accepted: Cond,
    resolved: Cond,
    roots: Option<Arc<Vec<rustls_pki_types::CertificateDer<'static>>>>,
    system: bool,
    ancestors: BTreeSet<usize>,
}

/// Everything a route kind has in common for attachment.
struct RouteIn<'m> {
    kind: RouteKind,
    idx: usize,
    meta: &'m ObjectMeta,
    hostnames: Vec<String>,
    parents: Vec<ParentIn>,
}

#[derive(Clone, Debug)]
struct ParentIn {
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: String,
    section_name: Option<String>,
    port: Option<i32>,
}

macro_rules! parent_in {
    ($p:expr) => {
        ParentIn {
            group: $p.group.clone(),
            kind: $p.kind.clone(),
            namespace: $p.namespace.clone(),
            name: $p.name.clone(),
            section_name: $p.section_name.clone(),
            port: $p.port,
        }
    };
}

/// The `backendRef` of a `RequestMirror` filter (a distinct type per filter position).
macro_rules! mirror_ref {
    ($b:expr) => {
        BackendRefIn {
            group: $b.group.as_deref(),
            kind: $b.kind.as_deref(),
            name: &$b.name,
            namespace: $b.namespace.as_deref(),
            port: $b.port,
            weight: Some(1),
        }
    };
}

/// A backendRef in any route kind.
struct BackendRefIn<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
    port: Option<i32>,
    weight: Option<i32>,
}

/// A policy index and the sectionName it targets.
type PolicyTarget = (usize, Option<String>);
/// A resolved backendRef and the policy governing its port.
type ResolvedPort = (Arc<ServicePort>, Option<PolicyUse>);
/// Why a backendRef did not resolve: table reason, status reason, message.
type Unresolved = (UnresolvedBackend, &'static str, String);
/// A route and the conditions of each parentRef it names.
type RouteStatusIn<'m> = (RouteIn<'m>, Vec<(ParentIn, Vec<Cond>)>);

pub(crate) struct Output {
    pub(crate) table: RouteTable,
    pub(crate) status: StatusReport,
    pub(crate) warnings: Vec<String>,
}

struct Compiler<'m> {
    opts: &'m CompileOptions,
    ix: Index<'m>,
    gws: Vec<GState<'m>>,
    policies: Vec<PState>,
    /// (service ns, service name, port name or "") -> policy use; "" key = whole service.
    policy_by_target: HashMap<(String, String, Option<String>), PolicyUse>,
    /// (service ns, service name) -> every policy targeting it, with its sectionName.
    policies_of_service: HashMap<(String, String), Vec<PolicyTarget>>,
    /// (service ns, service name) -> policies with no valid target that name this Service
    /// (missing, or without the named port): a Gateway whose routes use the Service is
    /// their ancestor, under which they report `TargetNotFound`.
    targets_not_found: HashMap<(String, String), Vec<usize>>,
    service_ports: HashMap<(String, String, u16), Arc<ServicePort>>,
    profiles: HashMap<(usize, usize), Arc<BackendTlsProfile>>,
    /// (kind, route index, gateway index) -> compiled rule range.
    compiled: HashMap<(RouteKind, usize, usize), std::ops::Range<usize>>,
    /// Route precedence rank (oldest first, then namespace/name).
    route_rank: HashMap<(&'static str, ObjectRef), usize>,
    table: RouteTable,
    warnings: Vec<String>,
}

/// Resolve and compile.
pub(crate) fn compile(m: &Manifests, opts: &CompileOptions, now: Timestamp) -> Output {
    let now = Time(now);
    let mut c = Compiler {
        opts,
        ix: Index::new(m),
        gws: Vec::new(),
        policies: Vec::new(),
        policy_by_target: HashMap::new(),
        policies_of_service: HashMap::new(),
        targets_not_found: HashMap::new(),
        service_ports: HashMap::new(),
        profiles: HashMap::new(),
        compiled: HashMap::new(),
        route_rank: HashMap::new(),
        table: RouteTable::default(),
        warnings: Vec::new(),
    };
    c.gateways();
    c.assign_binds();
    c.backend_tls_policies();
    let routes = c.routes();
    c.warn_unrelated_policies();
    c.finish_table();
    let status = c.status(&routes, &now);
    Output {
        table: c.table,
        status,
        warnings: c.warnings,
    }
}

impl<'m> Compiler<'m> {
    // ---------------------------------------------------------------- gateways

    fn gateways(&mut self) {
        let m = self.ix.m;
        let classes: HashMap<&str, &str> = m
            .gateway_classes
            .iter()
            .map(|c| {
                (
                    name_of(&c.obj.metadata),
                    c.obj.spec.controller_name.as_str(),
                )
            })
            .collect();
        let mut gws: Vec<&Gateway> = m.gateways.iter().map(|g| &g.obj).collect();
        gws.sort_by_key(|g| age_key(&g.metadata));
        for gw in gws {
            let class = gw.spec.gateway_class_name.as_str();
            if let Some(ctrl) = classes.get(class) {
                if *ctrl != self.opts.controller_name {
                    continue;
                }
            }
            let st = self.gateway(gw);
            self.gws.push(st);
        }
    }

    fn gateway(&self, gw: &'m Gateway) -> GState<'m> {
        let ns = ns_of(&gw.metadata);
        let name = name_of(&gw.metadata);
        let mut accepted = Cond::new("Accepted", true, "Accepted", "Gateway accepted");
        let mut addrs = Vec::new();
        for a in gw.spec.addresses.iter().flatten() {
            let ty = a.r#type.as_deref().unwrap_or("IPAddress");
            match (ty, a.value.as_deref()) {
                ("IPAddress", Some(v)) => match IpAddr::from_str(v) {
                    Ok(ip) => addrs.push(GwAddr::ip(ip)),
                    Err(_) => {
                        let why = format!("{v:?} is not an IP address");
                        accepted = Cond::new("Accepted", false, "UnsupportedAddress", why);
                    }
                },
                ("IPAddress", None) => {}
                (CIDR_ADDRESS_TYPE, Some(v)) => match parse_cidr(v) {
                    Ok(range) => addrs.push(range),
                    Err(why) => {
                        accepted = Cond::new("Accepted", false, "UnsupportedAddress", why);
                    }
                },
                (ty, _) => {
                    let why = format!("address type {ty} is not supported");
                    accepted = Cond::new("Accepted", false, "UnsupportedAddress", why);
                }
            }
        }
        if addrs.is_empty() {
            addrs = vec![
                GwAddr::ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                GwAddr::ip(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            ];
        }

        // spec.tls.backend.clientCertificateRef
        let mut resolved = None;
        let mut client_cert = None;
        if let Some(r) = gw
            .spec
            .tls
            .as_ref()
            .and_then(|t| t.backend.as_ref())
            .and_then(|b| b.client_certificate_ref.as_ref())
        {
            let rns = r.namespace.as_deref().unwrap_or(ns);
            let cond = if !is_core(r.group.as_deref())
                || r.kind.as_deref().unwrap_or("Secret") != "Secret"
            {
                Cond::new(
                    "ResolvedRefs",
                    false,
                    "InvalidClientCertificateRef",
                    "clientCertificateRef must be a core Secret",
                )
            } else if !self
                .ix
                .permitted((GROUP, "Gateway", ns), ("", "Secret", rns, &r.name))
            {
                Cond::new(
                    "ResolvedRefs",
                    false,
                    "RefNotPermitted",
                    format!(
                        "Secret {rns}/{} in another namespace without a ReferenceGrant",
                        r.name
                    ),
                )
            } else {
                match self.ix.tls_secret(rns, &r.name) {
                    Ok(k) => {
                        client_cert = Some(Arc::new(k));
                        Cond::new("ResolvedRefs", true, "ResolvedRefs", "references resolved")
                    }
                    Err(e) => Cond::new("ResolvedRefs", false, "InvalidClientCertificateRef", e),
                }
            };
            resolved = Some(cond);
        }

        let mut listeners: Vec<LState> = gw
            .spec
            .listeners
            .iter()
            .map(|l| self.listener(gw, l))
            .collect();
        conflicts(&mut listeners);
        if listeners.iter().any(|l| !l.accepted.ok || l.conflicted.ok) && accepted.ok {
            accepted = Cond::new(
                "Accepted",
                true,
                "ListenersNotValid",
                "some listeners are not valid",
            );
        }
        GState {
            gw,
            ns,
            name,
            generation: gen_of(&gw.metadata),
            addrs,
            accepted,
            resolved,
            client_cert,
            listeners,
        }
    }

    fn listener(
        &self,
        gw: &'m Gateway,
        l: &gateway_api::experimental::gateways::GatewayListeners,
    ) -> LState {
        let ns = ns_of(&gw.metadata);
        let mode = l.tls.as_ref().and_then(|t| t.mode.clone());
        let protocol = match (l.protocol.as_str(), mode) {
            ("HTTP", _) => Some(ListenerProtocol::Http),
            ("HTTPS", None | Some(GatewayListenersTlsMode::Terminate)) => {
                Some(ListenerProtocol::Https)
            }
            ("TLS", Some(GatewayListenersTlsMode::Passthrough)) => {
                Some(ListenerProtocol::TlsPassthrough)
            }
            ("TLS", None | Some(GatewayListenersTlsMode::Terminate)) => {
                Some(ListenerProtocol::TlsTerminate)
            }
            _ => None,
        };
        let port = u16::try_from(l.port).unwrap_or(0);
        let mut accepted = Cond::new("Accepted", true, "Accepted", "listener accepted");
        let mut resolved = Cond::new("ResolvedRefs", true, "ResolvedRefs", "references resolved");
        if protocol.is_none() {
            accepted = Cond::new(
                "Accepted",
                false,
                "UnsupportedProtocol",
                format!(
                    "protocol {} (TLS mode {:?}) is not supported",
                    l.protocol,
                    l.tls.as_ref().and_then(|t| t.mode.clone())
                ),
            );
        } else if port == 0 {
            accepted = Cond::new(
                "Accepted",
                false,
                "PortUnavailable",
                format!("port {} is not usable", l.port),
            );
        }
        let valid_kinds: &[RouteKind] = match protocol {
            Some(ListenerProtocol::Http | ListenerProtocol::Https) => {
                &[RouteKind::Http, RouteKind::Grpc]
            }
            Some(ListenerProtocol::TlsPassthrough | ListenerProtocol::TlsTerminate) => {
                &[RouteKind::Tls]
            }
            None => &[],
        };
        let mut kinds = Vec::new();
        match l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()) {
            Some(requested) if !requested.is_empty() => {
                for k in requested {
                    let group_ok = k.group.as_deref().is_none_or(|g| g == GROUP);
                    let found = valid_kinds.iter().find(|v| v.name() == k.kind);
                    match (group_ok, found) {
                        (true, Some(v)) => {
                            if !kinds.contains(v) {
                                kinds.push(*v)
                            }
                        }
                        _ => {
                            resolved = Cond::new(
                                "ResolvedRefs",
                                false,
                                "InvalidRouteKinds",
                                format!(
                                    "route kind {}/{} is not supported on this listener",
                                    k.group.as_deref().unwrap_or(GROUP),
                                    k.kind
                                ),
                            );
                        }
                    }
                }
            }
            _ => kinds.extend_from_slice(valid_kinds),
        }
        let allowed_ns = match l
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
        {
            None => AllowedNs::Same,
            Some(n) => match n.from.as_ref() {
                None | Some(From_::Same) => AllowedNs::Same,
                Some(From_::All) => AllowedNs::All,
                Some(From_::Selector) => {
                    let s = n.selector.as_ref();
                    AllowedNs::Selector(Selector {
                        labels: s.and_then(|s| s.match_labels.clone()).unwrap_or_default(),
                        exprs: s
                            .and_then(|s| s.match_expressions.as_ref())
                            .map(|e| {
                                e.iter()
                                    .map(|e| {
                                        (
                                            e.key.clone(),
                                            e.operator.clone(),
                                            e.values.clone().unwrap_or_default(),
                                        )
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    })
                }
            },
        };

        // Certificates.
        let mut certs = Vec::new();
        let terminates = matches!(
            protocol,
            Some(ListenerProtocol::Https | ListenerProtocol::TlsTerminate)
        );
        if terminates {
            let refs = l
                .tls
                .as_ref()
                .and_then(|t| t.certificate_refs.clone())
                .unwrap_or_default();
            if refs.is_empty() {
                resolved = Cond::new(
                    "ResolvedRefs",
                    false,
                    "InvalidCertificateRef",
                    "a terminating listener needs certificateRefs",
                );
            }
            for r in refs {
                let rns = r.namespace.as_deref().unwrap_or(ns);
                let bad = if !is_core(r.group.as_deref())
                    || r.kind.as_deref().unwrap_or("Secret") != "Secret"
                {
                    Some((
                        "InvalidCertificateRef",
                        format!(
                            "certificateRef {} {} is not a core Secret",
                            group_kind(r.group.as_deref(), r.kind.as_deref().unwrap_or("Secret")),
                            r.name
                        ),
                    ))
                } else if !self
                    .ix
                    .permitted((GROUP, "Gateway", ns), ("", "Secret", rns, &r.name))
                {
                    Some((
                        "RefNotPermitted",
                        format!(
                            "Secret {rns}/{} in another namespace without a ReferenceGrant",
                            r.name
                        ),
                    ))
                } else {
                    match self.ix.tls_secret(rns, &r.name) {
                        Ok(k) => {
                            certs.push(Arc::new(k));
                            None
                        }
                        Err(e) => Some(("InvalidCertificateRef", e)),
                    }
                };
                if let Some((reason, msg)) = bad {
                    if resolved.ok {
                        resolved = Cond::new("ResolvedRefs", false, reason, msg);
                    }
                }
            }
        }

        // Frontend client certificate validation (default, overridden per port).
        let mut frontend = None;
        if terminates {
            if let Some(f) = gw.spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) {
                let per_port = f.per_port.iter().flatten().find(|p| p.port == l.port);
                let v = match per_port {
                    Some(p) => p.tls.validation.as_ref().map(|v| {
                        (
                            v.ca_certificate_refs
                                .iter()
                                .map(|r| {
                                    (
                                        r.group.clone(),
                                        r.kind.clone(),
                                        r.name.clone(),
                                        r.namespace.clone(),
                                    )
                                })
                                .collect::<Vec<_>>(),
                            v.mode
                                .as_ref()
                                .is_some_and(|m| format!("{m:?}") == "AllowInsecureFallback"),
                        )
                    }),
                    None => f.default.validation.as_ref().map(|v| {
                        (
                            v.ca_certificate_refs
                                .iter()
                                .map(|r| {
                                    (
                                        r.group.clone(),
                                        r.kind.clone(),
                                        r.name.clone(),
                                        r.namespace.clone(),
                                    )
                                })
                                .collect::<Vec<_>>(),
                            matches!(
                                v.mode,
                                Some(
                                    GatewayTlsFrontendDefaultValidationMode::AllowInsecureFallback
                                )
                            ),
                        )
                    }),
                };
                if let Some((refs, insecure)) = v {
                    let mut cas = Vec::new();
                    let mut first_bad: Option<(&'static str, String)> = None;
                    for (g, k, n, rns) in refs {
                        let rns = rns.as_deref().unwrap_or(ns);
                        let kind_ok = is_core(Some(&g)) && (k == "ConfigMap" || k == "Secret");
                        let res: Result<Vec<_>, (&'static str, String)> = if !kind_ok {
                            Err((
                                "InvalidCACertificateKind",
                                format!("{g}/{k} is not a ConfigMap or Secret"),
                            ))
                        } else if !self.ix.permitted((GROUP, "Gateway", ns), ("", &k, rns, &n)) {
                            Err((
                                "RefNotPermitted",
                                format!(
                                    "{k} {rns}/{n} in another namespace without a ReferenceGrant"
                                ),
                            ))
                        } else {
                            self.ca_bundle(&k, rns, &n)
                                .map_err(|e| ("InvalidCACertificateRef", e))
                        };
                        match res {
                            Ok(c) => cas.extend(c),
                            Err(b) => {
                                first_bad.get_or_insert(b);
                            }
                        }
                    }
                    if let Some((reason, msg)) = first_bad {
                        if resolved.ok {
                            resolved = Cond::new("ResolvedRefs", false, reason, msg);
                        }
                    }
                    if cas.is_empty() {
                        accepted = Cond::new(
                            "Accepted",
                            false,
                            "NoValidCACertificate",
                            "no valid CA certificate for client validation",
                        );
                    } else {
                        frontend = Some(Arc::new(FrontendValidation {
                            ca_certificates: cas,
                            allow_insecure_fallback: insecure,
                        }));
                    }
                }
            }
        }

        LState {
            name: l.name.clone(),
            port,
            protocol,
            hostname: l
                .hostname
                .clone()
                .filter(|h| !h.is_empty())
                .map(|h| h.to_ascii_lowercase()),
            kinds,
            allowed_ns,
            accepted,
            resolved,
            conflicted: Cond::new("Conflicted", false, "NoConflicts", "no conflicts"),
            overlapping_tls: false,
            certs,
            frontend,
            // A BTreeMap: already sorted by key, as `Listener::tls_option` expects.
            tls_options: l
                .tls
                .as_ref()
                .and_then(|t| t.options.as_ref())
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                        .collect()
                })
                .unwrap_or_default(),
            attached: BTreeSet::new(),
            served_hosts: Vec::new(),
            id: None,
        }
    }

    /// CA certificates of a ConfigMap (or Secret, as an extension) `ca.crt`.
    fn ca_bundle(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
        let bytes = if kind == "Secret" {
            self.ix.secret_bytes(ns, name, "ca.crt")
        } else {
            self.ix.config_map_bytes(ns, name, "ca.crt")
        };
        let bytes = bytes
            .ok_or_else(|| format!("{kind} {ns}/{name} not found"))?
            .ok_or_else(|| format!("{kind} {ns}/{name} has no ca.crt"))?;
        cert::parse_certificates(&bytes, "ca.crt").map_err(|e| format!("{kind} {ns}/{name}: {e}"))
    }

    /// Listeners of all accepted Gateways -> ids and binds. Cross-Gateway protocol clashes
    /// on one address:port make the younger listener `PortUnavailable`.
    fn assign_binds(&mut self) {
        let mut binds: BTreeMap<SocketAddr, BindPlan> = BTreeMap::new();
        let mut order: Vec<SocketAddr> = Vec::new();
        for gi in 0..self.gws.len() {
            if !self.gws[gi].accepted.ok {
                continue;
            }
            let addrs = self.gws[gi].addrs.clone();
            for li in 0..self.gws[gi].listeners.len() {
                let l = &self.gws[gi].listeners[li];
                if !l.programmed() {
                    continue;
                }
                let Some(proto) = l.protocol else { continue };
                let key = HostKey::of(l.hostname.as_deref());
                let mut clash = None;
                for a in &addrs {
                    let Some((tls, _, selector, prefix_len)) =
                        binds.get(&SocketAddr::new(a.ip, l.port))
                    else {
                        continue;
                    };
                    if *prefix_len != a.prefix_len {
                        // A range's socket (on its first address) cannot also be that
                        // one address's, nor another range's.
                        clash = Some("with another address range");
                    } else if *tls != proto.is_tls() {
                        clash = Some("with another protocol");
                    } else if match &key {
                        HostKey::Any => selector.any.is_some(),
                        HostKey::Exact(h) => selector.exact.contains_key(h),
                        HostKey::Wildcard(s) => selector.wildcard.contains_key(s),
                    } {
                        // Not compatible: the older Gateway's listener gets every request.
                        clash.get_or_insert("for the same hostname");
                    }
                }
                if let Some(how) = clash {
                    let g = &mut self.gws[gi];
                    g.listeners[li].accepted = Cond::new(
                        "Accepted",
                        false,
                        "PortUnavailable",
                        format!(
                            "port {} is used {how} by another Gateway",
                            g.listeners[li].port
                        ),
                    );
                    if g.accepted.ok && g.accepted.reason == "Accepted" {
                        g.accepted = Cond::new(
                            "Accepted",
                            true,
                            "ListenersNotValid",
                            "some listeners are not valid",
                        );
                    }
                    continue;
                }
                let id = ListenerId(u32::try_from(self.table.listeners.len()).unwrap_or(u32::MAX));
                let g = &self.gws[gi];
                self.table.listeners.push(Listener {
                    id,
                    gateway: oref(g.ns, g.name),
                    name: l.name.as_str().into(),
                    port: l.port,
                    protocol: proto,
                    hostname: l.hostname.as_deref().map(Into::into),
                    certificates: l.certs.clone(),
                    frontend_validation: l.frontend.clone(),
                    tls_options: l.tls_options.clone(),
                    http: HostIndex::default(),
                    grpc: HostIndex::default(),
                    tls: HostIndex::default(),
                });
                for a in &addrs {
                    let sa = SocketAddr::new(a.ip, l.port);
                    let entry = binds.entry(sa).or_insert_with(|| {
                        order.push(sa);
                        (
                            proto.is_tls(),
                            Vec::new(),
                            HostIndex::default(),
                            a.prefix_len,
                        )
                    });
                    entry.1.push(id);
                    // The oldest Gateway keeps a hostname shared across Gateways.
                    entry.2.get_or_insert_with(&key, || id);
                }
                self.gws[gi].listeners[li].id = Some(id);
            }
        }
        for (i, sa) in order.iter().enumerate() {
            if let Some((tls, ids, selector, prefix_len)) = binds.remove(sa) {
                let protocol = ids
                    .first()
                    .and_then(|id| self.table.listeners.get(id.0 as usize))
                    .map_or(ListenerProtocol::Http, |l| l.protocol);
                self.table.ebpf.push(EbpfListenerEntry {
                    addr: sa.ip(),
                    port: sa.port(),
                    protocol,
                    tls,
                    bind_index: u32::try_from(i).unwrap_or(u32::MAX),
                });
                self.table.binds.push(Bind {
                    addr: *sa,
                    tls,
                    listeners: ids.into_boxed_slice(),
                    prefix_len,
                    selector,
                });
            }
        }
    }

    // ---------------------------------------------------------------- policies

    fn backend_tls_policies(&mut self) {
        let m = self.ix.m;
        let mut order: Vec<usize> = (0..m.backend_tls_policies.len()).collect();
        order.sort_by_key(|i| age_key(&m.backend_tls_policies[*i].obj.metadata));
        self.policies = (0..m.backend_tls_policies.len())
            .map(|_| PState {
                accepted: Cond::new("Accepted", true, "Accepted", "policy accepted"),
                resolved: Cond::new("ResolvedRefs", true, "ResolvedRefs", "references resolved"),
                roots: None,
                system: false,
                ancestors: BTreeSet::new(),
            })
            .collect();
        for &pi in &order {
            let p = &m.backend_tls_policies[pi].obj;
            let ns = ns_of(&p.metadata);
            let st = self.policy_state(p, ns);
            self.policies[pi] = st;
            // Targets: oldest policy wins a (service, section) target.
            let mut any_target = false;
            let mut conflicted: Option<String> = None;
            // Why each targetRef names nothing, and the Services named.
            let mut not_found: Vec<String> = Vec::new();
            let mut named_services: Vec<String> = Vec::new();
            for t in &p.spec.target_refs {
                if !is_core(Some(&t.group)) || t.kind != "Service" {
                    not_found.push(format!(
                        "targetRef {} {} is not a core Service",
                        group_kind(Some(&t.group), &t.kind),
                        t.name
                    ));
                    continue;
                }
                named_services.push(t.name.clone());
                let Some(svc) = self.ix.services.get(&(ns, t.name.as_str())) else {
                    not_found.push(format!("Service {ns}/{} not found", t.name));
                    continue;
                };
                if let Some(sec) = &t.section_name {
                    let has = svc
                        .spec
                        .as_ref()
                        .and_then(|s| s.ports.as_ref())
                        .is_some_and(|ps| {
                            ps.iter().any(|p| p.name.as_deref() == Some(sec.as_str()))
                        });
                    if !has {
                        not_found.push(format!("Service {ns}/{} has no port named {sec}", t.name));
                        continue;
                    }
                }
                any_target = true;
                self.policies_of_service
                    .entry((ns.to_string(), t.name.clone()))
                    .or_default()
                    .push((pi, t.section_name.clone()));
                let key = (ns.to_string(), t.name.clone(), t.section_name.clone());
                if let Some(PolicyUse::Valid(winner) | PolicyUse::Invalid(winner)) =
                    self.policy_by_target.get(&key)
                {
                    let w = &m.backend_tls_policies[*winner].obj.metadata;
                    let port = t
                        .section_name
                        .as_deref()
                        .map(|s| format!(" port {s}"))
                        .unwrap_or_default();
                    conflicted.get_or_insert(format!(
                        "BackendTLSPolicy {}/{} targets Service {ns}/{}{port} too and takes precedence (older creationTimestamp, then namespace/name)",
                        ns_of(w),
                        name_of(w),
                        t.name
                    ));
                    continue;
                }
                // A policy with any invalid CA reference carries no traffic either:
                // "Connections using an invalid CACertificateRef MUST fail" (5xx).
                let st = &self.policies[pi];
                let usage = if st.accepted.ok && st.resolved.ok {
                    PolicyUse::Valid(pi)
                } else {
                    PolicyUse::Invalid(pi)
                };
                self.policy_by_target.insert(key, usage);
            }
            if !any_target {
                for svc in named_services {
                    self.targets_not_found
                        .entry((ns.to_string(), svc))
                        .or_default()
                        .push(pi);
                }
            }
            let st = &mut self.policies[pi];
            if !any_target {
                st.accepted = Cond::new(
                    "Accepted",
                    false,
                    "TargetNotFound",
                    if not_found.is_empty() {
                        "no targetRefs".to_string()
                    } else {
                        not_found.join("; ")
                    },
                );
            } else if let Some(why) = conflicted.filter(|_| st.accepted.ok) {
                st.accepted = Cond::new("Accepted", false, "Conflicted", why);
            }
        }
    }

    fn policy_state(&self, p: &BackendTlsPolicy, ns: &str) -> PState {
        let v = &p.spec.validation;
        let refs = v.ca_certificate_refs.clone().unwrap_or_default();
        let mut st = PState {
            accepted: Cond::new("Accepted", true, "Accepted", "policy accepted"),
            resolved: Cond::new("ResolvedRefs", true, "ResolvedRefs", "references resolved"),
            roots: None,
            system: false,
            ancestors: BTreeSet::new(),
        };
        // A policy refused as written (`Accepted: False`, `Invalid`).
        let invalid = |mut st: PState, why: String| {
            st.accepted = Cond::new("Accepted", false, "Invalid", why);
            st
        };
        // subjectAltNames entries must carry the field their type names (the CRD's CEL
        // rules, which files do not go through): one that does not would otherwise be
        // left out, and an empty list falls back to checking the hostname.
        for (i, s) in v.subject_alt_names.iter().flatten().enumerate() {
            let (present, ty, field) = match s.r#type {
                BackendTlsPolicyValidationSubjectAltNamesType::Hostname => {
                    (s.hostname.as_deref(), "Hostname", "hostname")
                }
                BackendTlsPolicyValidationSubjectAltNamesType::Uri => {
                    (s.uri.as_deref(), "URI", "uri")
                }
            };
            if present.is_none_or(str::is_empty) {
                return invalid(
                    st,
                    format!("validation.subjectAltNames[{i}]: type {ty} without its {field}"),
                );
            }
        }
        // An empty wellKnownCACertificates is unspecified.
        let well_known = v
            .well_known_ca_certificates
            .as_ref()
            .filter(|w| !w.is_empty());
        match (well_known, refs.is_empty()) {
            (Some(w), true) if w == "System" => {
                st.system = true;
                return st;
            }
            (Some(w), true) => {
                return invalid(
                    st,
                    format!("wellKnownCACertificates {w:?} is not supported"),
                )
            }
            (Some(_), false) => {
                return invalid(
                    st,
                    "caCertificateRefs and wellKnownCACertificates are exclusive".into(),
                )
            }
            (None, true) => {
                return invalid(
                    st,
                    "caCertificateRefs or wellKnownCACertificates is required".into(),
                )
            }
            (None, false) => {}
        }
        let mut cas = Vec::new();
        for r in &refs {
            let res = if !is_core(Some(&r.group)) || !(r.kind == "ConfigMap" || r.kind == "Secret")
            {
                Err((
                    "InvalidKind",
                    format!("{}/{} is not a ConfigMap or Secret", r.group, r.kind),
                ))
            } else {
                self.ca_bundle(&r.kind, ns, &r.name)
                    .map_err(|e| ("InvalidCACertificateRef", e))
            };
            match res {
                Ok(c) => cas.extend(c),
                Err((reason, msg)) => {
                    if st.resolved.ok {
                        st.resolved = Cond::new("ResolvedRefs", false, reason, msg);
                    }
                }
            }
        }
        if cas.is_empty() {
            st.accepted = Cond::new(
                "Accepted",
                false,
                "NoValidCACertificate",
                "no valid CA certificate",
            );
        } else {
            st.roots = Some(Arc::new(cas));
        }
        st
    }

    /// The policy governing a Service port: a section-specific policy, else a whole-Service one.
    fn policy_for(&self, ns: &str, svc: &str, port_name: Option<&str>) -> Option<PolicyUse> {
        if let Some(pn) = port_name {
            if let Some(u) =
                self.policy_by_target
                    .get(&(ns.to_string(), svc.to_string(), Some(pn.to_string())))
            {
                return Some(u.clone());
            }
        }
        self.policy_by_target
            .get(&(ns.to_string(), svc.to_string(), None))
            .cloned()
    }

    // ---------------------------------------------------------------- routes

    fn route_inputs(&self) -> Vec<RouteIn<'m>> {
        let m = self.ix.m;
        let mut v = Vec::new();
        for (idx, r) in m.http_routes.iter().enumerate() {
            v.push(RouteIn {
                kind: RouteKind::Http,
                idx,
                meta: &r.obj.metadata,
                hostnames: r.obj.spec.hostnames.clone().unwrap_or_default(),
                parents: r
                    .obj
                    .spec
                    .parent_refs
                    .iter()
                    .flatten()
                    .map(|p| parent_in!(p))
                    .collect(),
            });
        }
        for (idx, r) in m.grpc_routes.iter().enumerate() {
            v.push(RouteIn {
                kind: RouteKind::Grpc,
                idx,
                meta: &r.obj.metadata,
                hostnames: r.obj.spec.hostnames.clone().unwrap_or_default(),
                parents: r
                    .obj
                    .spec
                    .parent_refs
                    .iter()
                    .flatten()
                    .map(|p| parent_in!(p))
                    .collect(),
            });
        }
        for (idx, r) in m.tls_routes.iter().enumerate() {
            v.push(RouteIn {
                kind: RouteKind::Tls,
                idx,
                meta: &r.obj.metadata,
                hostnames: r.obj.spec.hostnames.clone(),
                parents: r
                    .obj
                    .spec
                    .parent_refs
                    .iter()
                    .flatten()
                    .map(|p| parent_in!(p))
                    .collect(),
            });
        }
        // Precedence among routes: oldest first, then namespace/name.
        v.sort_by_key(|r| age_key(r.meta));
        v
    }

    fn backend_refs(&self, r: &RouteIn<'m>) -> Vec<BackendRefIn<'m>> {
        let m = self.ix.m;
        let mut out = Vec::new();
        match r.kind {
            RouteKind::Http => {
                for rule in m.http_routes[r.idx].obj.spec.rules.iter().flatten() {
                    for b in rule.backend_refs.iter().flatten() {
                        out.push(BackendRefIn {
                            group: b.group.as_deref(),
                            kind: b.kind.as_deref(),
                            name: &b.name,
                            namespace: b.namespace.as_deref(),
                            port: b.port,
                            weight: b.weight,
                        });
                        for f in b.filters.iter().flatten() {
                            if let Some(mr) = &f.request_mirror {
                                out.push(mirror_ref!(mr.backend_ref));
                            }
                        }
                    }
                    for f in rule.filters.iter().flatten() {
                        if let Some(mr) = &f.request_mirror {
                            out.push(mirror_ref!(mr.backend_ref));
                        }
                    }
                }
            }
            RouteKind::Grpc => {
                for rule in m.grpc_routes[r.idx].obj.spec.rules.iter().flatten() {
                    for b in rule.backend_refs.iter().flatten() {
                        out.push(BackendRefIn {
                            group: b.group.as_deref(),
                            kind: b.kind.as_deref(),
                            name: &b.name,
                            namespace: b.namespace.as_deref(),
                            port: b.port,
                            weight: b.weight,
                        });
                    }
                    for f in rule.filters.iter().flatten() {
                        if let Some(mr) = &f.request_mirror {
                            out.push(mirror_ref!(mr.backend_ref));
                        }
                    }
                }
            }
            RouteKind::Tls => {
                for rule in &m.tls_routes[r.idx].obj.spec.rules {
                    for b in &rule.backend_refs {
                        out.push(BackendRefIn {
                            group: b.group.as_deref(),
                            kind: b.kind.as_deref(),
                            name: &b.name,
                            namespace: b.namespace.as_deref(),
                            port: b.port,
                            weight: b.weight,
                        });
                    }
                }
            }
        }
        out
    }

    /// Resolve a backendRef to a Service port.
    fn service_port(
        &mut self,
        from: (RouteKind, &str),
        b: &BackendRefIn<'_>,
    ) -> Result<ResolvedPort, Unresolved> {
        let (kind, from_ns) = from;
        if !is_core(b.group) || b.kind.unwrap_or("Service") != "Service" {
            return Err((
                UnresolvedBackend::InvalidKind,
                "InvalidKind",
                format!(
                    "backendRef {} {} is not a core Service",
                    group_kind(b.group, b.kind.unwrap_or("Service")),
                    b.name
                ),
            ));
        }
        let ns = b.namespace.unwrap_or(from_ns);
        if !self
            .ix
            .permitted((GROUP, kind.name(), from_ns), ("", "Service", ns, b.name))
        {
            return Err((
                UnresolvedBackend::RefNotPermitted,
                "RefNotPermitted",
                format!(
                    "Service {ns}/{} in another namespace without a ReferenceGrant",
                    b.name
                ),
            ));
        }
        let Some(svc) = self.ix.services.get(&(ns, b.name)).copied() else {
            return Err((
                UnresolvedBackend::NotFound,
                "BackendNotFound",
                format!("Service {ns}/{} not found", b.name),
            ));
        };
        let Some(port) = b.port.and_then(|p| u16::try_from(p).ok()) else {
            return Err((
                UnresolvedBackend::NotFound,
                "BackendNotFound",
                format!("backendRef to Service {ns}/{} needs a port", b.name),
            ));
        };
        let Some(sp) = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|ps| ps.iter().find(|p| p.port == i32::from(port)))
        else {
            return Err((
                UnresolvedBackend::NotFound,
                "BackendNotFound",
                format!("Service {ns}/{} has no port {port}", b.name),
            ));
        };
        let policy = self.policy_for(ns, b.name, sp.name.as_deref());
        let key = (ns.to_string(), b.name.to_string(), port);
        if let Some(p) = self.service_ports.get(&key) {
            return Ok((p.clone(), policy));
        }
        let mut eps = Vec::new();
        for &si in self.ix.slices.get(&(ns, b.name)).into_iter().flatten() {
            let s = &self.ix.m.endpoint_slices[si].obj;
            if !matches!(s.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let want = sp.name.as_deref().unwrap_or("");
            let Some(p) = s
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == want)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for e in s.endpoints.iter().flatten() {
                if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for a in &e.addresses {
                    if let Ok(ip) = IpAddr::from_str(a) {
                        let sa = SocketAddr::new(ip, p);
                        if !eps.contains(&sa) {
                            eps.push(sa);
                        }
                    }
                }
            }
        }
        let sp = Arc::new(ServicePort {
            service: oref(ns, b.name),
            port,
            port_name: sp.name.as_deref().map(Into::into),
            app_protocol: sp.app_protocol.as_deref().map(Into::into),
            endpoints: eps.into_boxed_slice(),
        });
        self.service_ports.insert(key, sp.clone());
        Ok((sp, policy))
    }

    /// A backendRef compiled for a Gateway (its client certificate joins the TLS profile).
    fn backend(
        &mut self,
        from: (RouteKind, &str),
        gi: usize,
        b: &BackendRefIn<'_>,
        filters: Box<[HttpFilter]>,
    ) -> Backend {
        let ns = b.namespace.unwrap_or(from.1);
        // HTTPRoute and GRPCRoute rules with a weight out of range are dropped before
        // this; the bound keeps a TLSRoute's sum of weights far from overflowing.
        let weight = u32::try_from(b.weight.unwrap_or(1))
            .unwrap_or(0)
            .min(MAX_WEIGHT);
        let resolved = self.service_port(from, b);
        // A route of this Gateway may use the Service: policies that name it but found no
        // target (Service missing, or no port of that name) report it under this Gateway.
        if matches!(&resolved, Ok(_) | Err((UnresolvedBackend::NotFound, _, _))) {
            if let Some(ps) = self
                .targets_not_found
                .get(&(ns.to_string(), b.name.to_string()))
            {
                for &pi in ps {
                    self.policies[pi].ancestors.insert(gi);
                }
            }
        }
        match resolved {
            Ok((sp, policy)) => {
                // Every policy targeting this Service port reports this Gateway as an
                // ancestor, including those that lost a conflict.
                let key = (
                    sp.service.namespace.to_string(),
                    sp.service.name.to_string(),
                );
                if let Some(ps) = self.policies_of_service.get(&key) {
                    for (pi, section) in ps {
                        if section.is_none() || section.as_deref() == sp.port_name.as_deref() {
                            self.policies[*pi].ancestors.insert(gi);
                        }
                    }
                }
                let tls = match policy {
                    None => BackendTls::None,
                    Some(PolicyUse::Invalid(pi)) => {
                        self.policies[pi].ancestors.insert(gi);
                        BackendTls::Invalid
                    }
                    Some(PolicyUse::Valid(pi)) => {
                        self.policies[pi].ancestors.insert(gi);
                        BackendTls::Profile(self.profile(pi, gi))
                    }
                };
                Backend {
                    name: oref(ns, b.name),
                    weight,
                    target: Ok(sp),
                    tls,
                    filters,
                }
            }
            Err((e, _, _)) => Backend {
                name: oref(ns, b.name),
                weight,
                target: Err(e),
                tls: BackendTls::None,
                filters,
            },
        }
    }

    /// A policy with no target and no Gateway to report under would show an empty
    /// status: say so in the warnings (`gatewayd check` prints them, `run` logs them).
    fn warn_unrelated_policies(&mut self) {
        for (pi, p) in self.ix.m.backend_tls_policies.iter().enumerate() {
            let st = &self.policies[pi];
            if st.accepted.reason == "TargetNotFound" && st.ancestors.is_empty() {
                self.warnings.push(format!(
                    "BackendTLSPolicy {}/{}: {} (file {}, line {}); no route of a served Gateway uses it, so its status lists no ancestor",
                    ns_of(&p.obj.metadata),
                    name_of(&p.obj.metadata),
                    st.accepted.message,
                    p.src.file.display(),
                    p.src.line
                ));
            }
        }
    }

    fn profile(&mut self, pi: usize, gi: usize) -> Arc<BackendTlsProfile> {
        if let Some(p) = self.profiles.get(&(pi, gi)) {
            return p.clone();
        }
        let p = &self.ix.m.backend_tls_policies[pi].obj;
        let st = &self.policies[pi];
        let roots = match &st.roots {
            Some(r) if !st.system => TrustRoots::Certificates(r.as_ref().clone()),
            _ => TrustRoots::System,
        };
        let sans = p
            .spec
            .validation
            .subject_alt_names
            .iter()
            .flatten()
            .filter_map(|s| match s.r#type {
                BackendTlsPolicyValidationSubjectAltNamesType::Hostname => s
                    .hostname
                    .as_deref()
                    .map(|h| SubjectAltName::Hostname(h.into())),
                BackendTlsPolicyValidationSubjectAltNamesType::Uri => {
                    s.uri.as_deref().map(|u| SubjectAltName::Uri(u.into()))
                }
            })
            .collect();
        let prof = Arc::new(BackendTlsProfile {
            id: u32::try_from(self.table.profiles.len()).unwrap_or(u32::MAX),
            policy: oref(ns_of(&p.metadata), name_of(&p.metadata)),
            roots,
            hostname: p.spec.validation.hostname.as_str().into(),
            subject_alt_names: sans,
            client_certificate: self.gws[gi].client_cert.clone(),
        });
        self.table.profiles.push(prof.clone());
        self.profiles.insert((pi, gi), prof.clone());
        prof
    }

    /// Attach every route, compile the attached ones, and return per-route parent statuses.
    fn routes(&mut self) -> Vec<RouteStatusIn<'m>> {
        let inputs = self.route_inputs();
        for (rank, r) in inputs.iter().enumerate() {
            self.route_rank
                .insert((r.kind.name(), oref(ns_of(r.meta), name_of(r.meta))), rank);
        }
        let mut out = Vec::new();
        for r in inputs {
            let ns = ns_of(r.meta);
            let refs = self.backend_refs(&r);
            // ResolvedRefs: first failing backendRef.
            let mut resolved =
                Cond::new("ResolvedRefs", true, "ResolvedRefs", "references resolved");
            for b in &refs {
                if let Err((_, reason, msg)) = self.service_port((r.kind, ns), b) {
                    resolved = Cond::new("ResolvedRefs", false, reason, msg);
                    break;
                }
            }
            if resolved.ok {
                if let Some(why) = self.extension_ref(&r) {
                    resolved = Cond::new("ResolvedRefs", false, "InvalidKind", why);
                }
            }
            // Invalid rules are dropped; a route with no valid rule is not accepted.
            let problems = self.rule_problems(&r);
            let dropped: Vec<(usize, &String)> = problems
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
                .collect();
            let unsupported = (!dropped.is_empty() && dropped.len() == problems.len())
                .then(|| dropped[0].1.clone());
            let partially = (!dropped.is_empty() && unsupported.is_none()).then(|| {
                let list: Vec<String> = dropped.iter().map(|(i, p)| format!("{i} ({p})")).collect();
                Cond::new(
                    "PartiallyInvalid",
                    true,
                    "UnsupportedValue",
                    format!("Dropped Rule(s) {}", list.join(", ")),
                )
            });
            let mut parents = Vec::new();
            for p in &r.parents {
                let group_ok = p.group.as_deref().is_none_or(|g| g == GROUP);
                let kind_ok = p.kind.as_deref().is_none_or(|k| k == "Gateway");
                if !group_ok || !kind_ok {
                    continue; // not a parent this controller serves
                }
                let gns = p.namespace.as_deref().unwrap_or(ns);
                let gi = self
                    .gws
                    .iter()
                    .position(|g| g.ns == gns && g.name == p.name);
                let Some(gi) = gi else {
                    let exists = self.ix.m.gateways.iter().any(|g| {
                        ns_of(&g.obj.metadata) == gns && name_of(&g.obj.metadata) == p.name
                    });
                    if exists {
                        continue; // another controller's Gateway
                    }
                    parents.push((
                        p.clone(),
                        vec![
                            Cond::new(
                                "Accepted",
                                false,
                                "NoMatchingParent",
                                format!("Gateway {gns}/{} not found", p.name),
                            ),
                            resolved.clone(),
                        ],
                    ));
                    continue;
                };
                let accepted = self.attach(&r, p, gi, unsupported.as_deref());
                let mut conds = vec![accepted, resolved.clone()];
                if let Some(pi) = partially.as_ref().filter(|_| conds[0].ok) {
                    conds.push(pi.clone());
                }
                parents.push((p.clone(), conds));
            }
            out.push((r, parents));
        }
        out
    }

    /// Why each rule of a route is invalid (unsupported filter or value, bad regex), in
    /// rule order; `None` for a valid rule. Invalid rules are dropped (spec
    /// `PartiallyInvalid`, approach "Drop Rule(s)").
    fn rule_problems(&self, r: &RouteIn<'m>) -> Vec<Option<String>> {
        match r.kind {
            RouteKind::Http => self.ix.m.http_routes[r.idx]
                .obj
                .spec
                .rules
                .iter()
                .flatten()
                .map(http_rule_problem)
                .collect(),
            RouteKind::Grpc => self.ix.m.grpc_routes[r.idx]
                .obj
                .spec
                .rules
                .iter()
                .flatten()
                .map(grpc_rule_problem)
                .collect(),
            RouteKind::Tls => Vec::new(),
        }
    }

    /// The first `ExtensionRef` filter of a route: gatewayd supports no extension
    /// kind, so the reference is to an unsupported Group/Kind (`InvalidKind`). The filter
    /// is not skipped: its rule answers with an error (`HttpRule::invalid`).
    fn extension_ref(&self, r: &RouteIn<'m>) -> Option<String> {
        // The HTTPRoute and GRPCRoute types differ but have the same field names: the
        // first extensionRef of a rule's filters or its backendRefs' filters.
        macro_rules! first_extension_ref {
            ($rules:expr) => {
                $rules.iter().flatten().find_map(|rule| {
                    let backend_filters = rule
                        .backend_refs
                        .iter()
                        .flatten()
                        .flat_map(|b| b.filters.iter().flatten())
                        .filter_map(|f| f.extension_ref.as_ref());
                    rule.filters
                        .iter()
                        .flatten()
                        .filter_map(|f| f.extension_ref.as_ref())
                        .map(|e| (&e.group, &e.kind, &e.name))
                        .chain(backend_filters.map(|e| (&e.group, &e.kind, &e.name)))
                        .next()
                        .map(|(g, k, n)| {
                            format!("ExtensionRef filter {g}/{k} {n}: the kind is not supported")
                        })
                })
            };
        }
        let m = self.ix.m;
        match r.kind {
            RouteKind::Http => first_extension_ref!(m.http_routes[r.idx].obj.spec.rules),
            RouteKind::Grpc => first_extension_ref!(m.grpc_routes[r.idx].obj.spec.rules),
            RouteKind::Tls => None,
        }
    }

    /// Attach a route to a Gateway parentRef: pick listeners, check kinds, namespaces and
    /// hostnames, compile into each accepting listener. Returns the Accepted condition.
    fn attach(
        &mut self,
        r: &RouteIn<'m>,
        p: &ParentIn,
        gi: usize,
        unsupported: Option<&str>,
    ) -> Cond {
        let ns = ns_of(r.meta);
        let g = &self.gws[gi];
        let candidates: Vec<usize> = (0..g.listeners.len())
            .filter(|&li| {
                let l = &g.listeners[li];
                p.section_name.as_deref().is_none_or(|s| s == l.name)
                    && p.port.is_none_or(|port| port == i32::from(l.port))
            })
            .collect();
        if candidates.is_empty() {
            return Cond::new(
                "Accepted",
                false,
                "NoMatchingParent",
                "no listener matches the parentRef sectionName/port",
            );
        }
        if !g.accepted.ok {
            return Cond::new(
                "Accepted",
                false,
                "NotAllowedByListeners",
                "the Gateway is not accepted",
            );
        }
        let route_ns_labels = self.ix.ns_labels(ns);
        let mut allowed = Vec::new();
        for &li in &candidates {
            let l = &g.listeners[li];
            let ns_ok = match &l.allowed_ns {
                AllowedNs::Same => ns == g.ns,
                AllowedNs::All => true,
                AllowedNs::Selector(s) => s.matches(&route_ns_labels),
            };
            if ns_ok && l.kinds.contains(&r.kind) {
                allowed.push(li);
            }
        }
        if allowed.is_empty() {
            return Cond::new(
                "Accepted",
                false,
                "NotAllowedByListeners",
                format!("no listener allows {} from namespace {ns}", r.kind.name()),
            );
        }
        let mut attached = Vec::new();
        for li in allowed {
            let l = &g.listeners[li];
            let hosts: Vec<Option<String>> = if r.hostnames.is_empty() {
                vec![l.hostname.clone()]
            } else {
                r.hostnames
                    .iter()
                    .filter_map(|h| hostname::intersect(l.hostname.as_deref(), h))
                    .map(Some)
                    .collect()
            };
            if !hosts.is_empty() {
                attached.push((li, hosts));
            }
        }
        if attached.is_empty() {
            return Cond::new(
                "Accepted",
                false,
                "NoMatchingListenerHostname",
                "no listener hostname intersects the route's hostnames",
            );
        }
        if let Some(why) = unsupported {
            // Not Accepted, so not counted in attachedRoutes (spec ListenerStatus).
            return Cond::new("Accepted", false, "UnsupportedValue", why.to_string());
        }
        // Cross serving (GRPCRoute.spec.hostnames): an HTTPRoute and a GRPCRoute with
        // intersecting hostnames on one listener: only the older is accepted there.
        // Routes attach oldest first, so a route of the other kind already here wins.
        let other = match r.kind {
            RouteKind::Http => Some(RouteKind::Grpc),
            RouteKind::Grpc => Some(RouteKind::Http),
            RouteKind::Tls => None,
        };
        if let Some(other) = other {
            let mut clash_with = None;
            let listeners = &self.gws[gi].listeners;
            attached.retain(|(li, hosts)| {
                let clash = listeners[*li].served_hosts.iter().any(|(k, served)| {
                    *k == other
                        && served.iter().any(|a| {
                            hosts
                                .iter()
                                .any(|b| hostnames_overlap(a.as_deref(), b.as_deref()))
                        })
                });
                if clash {
                    clash_with.get_or_insert_with(|| listeners[*li].name.clone());
                }
                !clash
            });
            if attached.is_empty() {
                return Cond::new(
                    "Accepted",
                    false,
                    "HostnameConflict",
                    format!(
                        "an older {} on listener {} has an intersecting hostname",
                        other.name(),
                        clash_with.unwrap_or_default()
                    ),
                );
            }
        }
        for (li, hosts) in attached {
            if other.is_some() {
                self.gws[gi].listeners[li]
                    .served_hosts
                    .push((r.kind, hosts.clone()));
            }
            self.gws[gi].listeners[li].attached.insert((r.kind, r.idx));
            if let Some(id) = self.gws[gi].listeners[li].id {
                self.index_route(r, gi, id, &hosts);
            }
        }
        Cond::new("Accepted", true, "Accepted", "route accepted")
    }

    /// Compile a route's rules for a Gateway (once) and index them under a listener's hosts.
    fn index_route(
        &mut self,
        r: &RouteIn<'m>,
        gi: usize,
        id: ListenerId,
        hosts: &[Option<String>],
    ) {
        let ns = ns_of(r.meta);
        let name = name_of(r.meta);
        match r.kind {
            RouteKind::Http => {
                let range = self.compiled_http(r, gi);
                let listener = &mut self.table.listeners[id.0 as usize];
                for h in hosts {
                    let key = HostKey::of(h.as_deref());
                    let bucket = listener.http.get_or_insert_with(&key, HttpBucket::default);
                    for ri in range.clone() {
                        let rule = &self.table.http_rules[ri];
                        for (mi, m) in rule.matches.iter().enumerate() {
                            let e = Entry {
                                rule: ri as u32,
                                matched: mi as u32,
                            };
                            match &m.path {
                                PathMatch::Exact(p) => {
                                    bucket.exact.entry(p.clone()).or_default().push(e)
                                }
                                PathMatch::Prefix(p) => {
                                    bucket.prefix.entry(p.clone()).or_default().push(e)
                                }
                                PathMatch::Regex(_) => bucket.regex.push(e),
                            }
                        }
                    }
                }
            }
            RouteKind::Grpc => {
                let range = self.compiled_grpc(r, gi);
                let listener = &mut self.table.listeners[id.0 as usize];
                for h in hosts {
                    let key = HostKey::of(h.as_deref());
                    let v = listener.grpc.get_or_insert_with(&key, Vec::new);
                    for ri in range.clone() {
                        let n = self.table.grpc_rules[ri].matches.len();
                        if n == 0 {
                            v.push(GrpcEntry {
                                rule: ri as u32,
                                matched: u32::MAX,
                            });
                        }
                        for mi in 0..n {
                            v.push(GrpcEntry {
                                rule: ri as u32,
                                matched: mi as u32,
                            });
                        }
                    }
                }
            }
            RouteKind::Tls => {
                let route = &self.ix.m.tls_routes[r.idx].obj;
                let mut backends = Vec::new();
                for rule in &route.spec.rules {
                    for b in &rule.backend_refs {
                        let bi = BackendRefIn {
                            group: b.group.as_deref(),
                            kind: b.kind.as_deref(),
                            name: &b.name,
                            namespace: b.namespace.as_deref(),
                            port: b.port,
                            weight: b.weight,
                        };
                        backends.push(self.backend((RouteKind::Tls, ns), gi, &bi, Box::new([])));
                    }
                }
                let total_weight = backends
                    .iter()
                    .fold(0u32, |sum, b| sum.saturating_add(b.weight));
                let target = Arc::new(TlsTarget {
                    source: RouteRef {
                        kind: "TLSRoute",
                        route: oref(ns, name),
                        rule_index: 0,
                        rule_name: route
                            .spec
                            .rules
                            .first()
                            .and_then(|r| r.name.as_deref())
                            .map(Into::into),
                    },
                    backends: backends.into_boxed_slice(),
                    total_weight,
                });
                let listener = &mut self.table.listeners[id.0 as usize];
                for h in hosts {
                    // Routes are processed oldest first: the oldest keeps a hostname.
                    listener
                        .tls
                        .get_or_insert_with(&HostKey::of(h.as_deref()), || target.clone());
                }
            }
        }
    }

    fn compiled_http(&mut self, r: &RouteIn<'m>, gi: usize) -> std::ops::Range<usize> {
        let key = (RouteKind::Http, r.idx, gi);
        if let Some(range) = self.compiled.get(&key) {
            return range.clone();
        }
        let route: &'m HttpRoute = &self.ix.m.http_routes[r.idx].obj;
        let ns = ns_of(r.meta);
        let name = name_of(r.meta);
        let start = self.table.http_rules.len();
        let default_rule = gateway_api::experimental::httproutes::HttpRouteRules::default();
        let rules: Vec<&gateway_api::experimental::httproutes::HttpRouteRules> =
            match &route.spec.rules {
                Some(rs) if !rs.is_empty() => rs.iter().collect(),
                _ => vec![&default_rule],
            };
        for (ri, rule) in rules.into_iter().enumerate() {
            if http_rule_problem(rule).is_some() {
                continue; // dropped (PartiallyInvalid)
            }
            let matches: Vec<HttpMatch> = match &rule.matches {
                Some(ms) if !ms.is_empty() => {
                    ms.iter().filter_map(|m| compile_match(m).ok()).collect()
                }
                _ => vec![HttpMatch {
                    path: PathMatch::Prefix("".into()),
                    method: None,
                    headers: Box::new([]),
                    query: Box::new([]),
                }],
            };
            let mut invalid = None;
            let filters = self.http_filters(
                rule.filters.as_deref().unwrap_or(&[]),
                (RouteKind::Http, ns),
                gi,
                &mut invalid,
            );
            let mut backends = Vec::new();
            for b in rule.backend_refs.iter().flatten() {
                let bf = match backend_filters(b) {
                    Ok(fs) => self.http_filters(&fs, (RouteKind::Http, ns), gi, &mut invalid),
                    Err(e) => {
                        invalid.get_or_insert(e);
                        Box::new([])
                    }
                };
                let bi = BackendRefIn {
                    group: b.group.as_deref(),
                    kind: b.kind.as_deref(),
                    name: &b.name,
                    namespace: b.namespace.as_deref(),
                    port: b.port,
                    weight: b.weight,
                };
                backends.push(self.backend((RouteKind::Http, ns), gi, &bi, bf));
            }
            let timeouts = rule.timeouts.as_ref().map(|t| Timeouts {
                request: t
                    .request
                    .as_deref()
                    .and_then(|d| parse_duration(d).ok())
                    .flatten(),
                backend_request: t
                    .backend_request
                    .as_deref()
                    .and_then(|d| parse_duration(d).ok())
                    .flatten(),
            });
            let retry = rule.retry.as_ref().map(|rt| Retry {
                codes: rt
                    .codes
                    .iter()
                    .flatten()
                    .filter_map(|c| u16::try_from(*c).ok())
                    .collect(),
                attempts: rt.attempts.and_then(|a| u32::try_from(a).ok()).unwrap_or(1),
                backoff: rt
                    .backoff
                    .as_deref()
                    .and_then(|d| parse_duration(d).ok())
                    .flatten(),
            });
            let total_weight = backends
                .iter()
                .fold(0u32, |sum, b| sum.saturating_add(b.weight));
            self.table.http_rules.push(HttpRule {
                source: RouteRef {
                    kind: "HTTPRoute",
                    route: oref(ns, name),
                    rule_index: ri as u32,
                    rule_name: rule.name.as_deref().map(Into::into),
                },
                matches: matches.into_boxed_slice(),
                filters,
                backends: backends.into_boxed_slice(),
                total_weight,
                timeouts: timeouts.unwrap_or_default(),
                retry,
                invalid: invalid.map(|s: String| s.into()),
            });
        }
        let range = start..self.table.http_rules.len();
        self.compiled.insert(key, range.clone());
        range
    }

    fn http_filters(
        &mut self,
        fs: &[HttpRouteRulesFilters],
        from: (RouteKind, &str),
        gi: usize,
        invalid: &mut Option<String>,
    ) -> Box<[HttpFilter]> {
        let mut out = Vec::new();
        for f in fs {
            match f.r#type {
                HttpRouteRulesFiltersType::RequestHeaderModifier => {
                    if let Some(h) = &f.request_header_modifier {
                        out.push(HttpFilter::RequestHeaderModifier(header_mod(
                            h.set
                                .iter()
                                .flatten()
                                .map(|x| (x.name.as_str(), x.value.as_str())),
                            h.add
                                .iter()
                                .flatten()
                                .map(|x| (x.name.as_str(), x.value.as_str())),
                            h.remove.iter().flatten(),
                        )));
                    }
                }
                HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                    if let Some(h) = &f.response_header_modifier {
                        out.push(HttpFilter::ResponseHeaderModifier(header_mod(
                            h.set
                                .iter()
                                .flatten()
                                .map(|x| (x.name.as_str(), x.value.as_str())),
                            h.add
                                .iter()
                                .flatten()
                                .map(|x| (x.name.as_str(), x.value.as_str())),
                            h.remove.iter().flatten(),
                        )));
                    }
                }
                HttpRouteRulesFiltersType::RequestRedirect => {
                    if let Some(rd) = &f.request_redirect {
                        out.push(HttpFilter::RequestRedirect(RequestRedirect {
                            scheme: rd.scheme.as_ref().map(|s| match s {
                                HttpRouteRulesFiltersRequestRedirectScheme::Http => "http".into(),
                                HttpRouteRulesFiltersRequestRedirectScheme::Https => "https".into(),
                            }),
                            hostname: rd.hostname.as_deref().map(Into::into),
                            port: rd.port.and_then(|p| u16::try_from(p).ok()),
                            path: rd.path.as_ref().and_then(|p| match p.r#type {
                                RedirectPathType::ReplaceFullPath => p
                                    .replace_full_path
                                    .as_deref()
                                    .map(|s| PathModifier::ReplaceFullPath(s.into())),
                                RedirectPathType::ReplacePrefixMatch => p
                                    .replace_prefix_match
                                    .as_deref()
                                    .map(|s| PathModifier::ReplacePrefixMatch(s.into())),
                            }),
                            status_code: rd
                                .status_code
                                .and_then(|c| u16::try_from(c).ok())
                                .unwrap_or(302),
                        }));
                    }
                }
                HttpRouteRulesFiltersType::UrlRewrite => {
                    if let Some(rw) = &f.url_rewrite {
                        out.push(HttpFilter::UrlRewrite(UrlRewrite {
                            hostname: rw.hostname.as_deref().map(Into::into),
                            path: rw.path.as_ref().and_then(|p| match p.r#type {
                                RewritePathType::ReplaceFullPath => p
                                    .replace_full_path
                                    .as_deref()
                                    .map(|s| PathModifier::ReplaceFullPath(s.into())),
                                RewritePathType::ReplacePrefixMatch => p
                                    .replace_prefix_match
                                    .as_deref()
                                    .map(|s| PathModifier::ReplacePrefixMatch(s.into())),
                            }),
                        }));
                    }
                }
                HttpRouteRulesFiltersType::RequestMirror => {
                    if let Some(mr) = &f.request_mirror {
                        let b = &mr.backend_ref;
                        let bi = BackendRefIn {
                            group: b.group.as_deref(),
                            kind: b.kind.as_deref(),
                            name: &b.name,
                            namespace: b.namespace.as_deref(),
                            port: b.port,
                            weight: Some(1),
                        };
                        let backend = self.backend(from, gi, &bi, Box::new([]));
                        let (numerator, denominator) = match (&mr.fraction, mr.percent) {
                            (Some(fr), _) => (
                                u32::try_from(fr.numerator).unwrap_or(0),
                                fr.denominator
                                    .and_then(|d| u32::try_from(d).ok())
                                    .unwrap_or(100),
                            ),
                            (None, Some(p)) => (u32::try_from(p).unwrap_or(0), 100),
                            (None, None) => (100, 100),
                        };
                        out.push(HttpFilter::RequestMirror(RequestMirror {
                            backend,
                            numerator,
                            denominator,
                        }));
                    }
                }
                ref other => {
                    invalid.get_or_insert_with(|| format!("filter {other:?} is not supported"));
                }
            }
        }
        out.into_boxed_slice()
    }

    fn compiled_grpc(&mut self, r: &RouteIn<'m>, gi: usize) -> std::ops::Range<usize> {
        let key = (RouteKind::Grpc, r.idx, gi);
        if let Some(range) = self.compiled.get(&key) {
            return range.clone();
        }
        let route: &'m GrpcRoute = &self.ix.m.grpc_routes[r.idx].obj;
        let ns = ns_of(r.meta);
        let name = name_of(r.meta);
        let start = self.table.grpc_rules.len();
        for (ri, rule) in route.spec.rules.iter().flatten().enumerate() {
            if grpc_rule_problem(rule).is_some() {
                continue; // dropped (PartiallyInvalid)
            }
            let matches: Vec<GrpcMatch> = rule
                .matches
                .iter()
                .flatten()
                .filter_map(|m| compile_grpc_match(m).ok())
                .collect();
            let mut invalid = None;
            let fs = as_rule_filters(rule.filters.as_deref().unwrap_or(&[])).unwrap_or_default();
            let filters = self.http_filters(&fs, (RouteKind::Grpc, ns), gi, &mut invalid);
            let mut backends = Vec::new();
            for b in rule.backend_refs.iter().flatten() {
                let bfs = as_rule_filters(b.filters.as_deref().unwrap_or(&[])).unwrap_or_default();
                let bf = self.http_filters(&bfs, (RouteKind::Grpc, ns), gi, &mut invalid);
                let bi = BackendRefIn {
                    group: b.group.as_deref(),
                    kind: b.kind.as_deref(),
                    name: &b.name,
                    namespace: b.namespace.as_deref(),
                    port: b.port,
                    weight: b.weight,
                };
                backends.push(self.backend((RouteKind::Grpc, ns), gi, &bi, bf));
            }
            let total_weight = backends
                .iter()
                .fold(0u32, |sum, b| sum.saturating_add(b.weight));
            self.table.grpc_rules.push(GrpcRule {
                source: RouteRef {
                    kind: "GRPCRoute",
                    route: oref(ns, name),
                    rule_index: ri as u32,
                    rule_name: rule.name.as_deref().map(Into::into),
                },
                matches: matches.into_boxed_slice(),
                filters,
                backends: backends.into_boxed_slice(),
                total_weight,
                invalid: invalid.map(|s: String| s.into()),
            });
        }
        let range = start..self.table.grpc_rules.len();
        self.compiled.insert(key, range.clone());
        range
    }

    /// Sort every bucket by Gateway API precedence.
    fn finish_table(&mut self) {
        let t = &mut self.table;
        let http_rules = &t.http_rules;
        let route_rank = &self.route_rank;
        let http_key = |e: &Entry| {
            let rule = &http_rules[e.rule as usize];
            let m = &rule.matches[e.matched as usize];
            let regex_len = match &m.path {
                PathMatch::Regex(r) => r.as_str().len(),
                _ => 0,
            };
            (
                std::cmp::Reverse(regex_len),
                m.method.is_none(),
                std::cmp::Reverse(m.headers.len()),
                std::cmp::Reverse(m.query.len()),
                route_rank
                    .get(&("HTTPRoute", rule.source.route.clone()))
                    .copied()
                    .unwrap_or(usize::MAX),
                rule.source.rule_index,
                e.matched,
            )
        };
        let grpc_rules = &t.grpc_rules;
        let grpc_key = |e: &GrpcEntry| {
            let rule = &grpc_rules[e.rule as usize];
            let m = rule.matches.get(e.matched as usize);
            let len = |s: Option<&StringMatch>| match s {
                Some(StringMatch::Exact(x)) => x.len(),
                Some(StringMatch::Regex(r)) => r.as_str().len(),
                None => 0,
            };
            (
                std::cmp::Reverse(m.map_or(0, |m| len(m.service.as_ref()))),
                std::cmp::Reverse(m.map_or(0, |m| len(m.method.as_ref()))),
                std::cmp::Reverse(m.map_or(0, |m| m.headers.len())),
                route_rank
                    .get(&("GRPCRoute", rule.source.route.clone()))
                    .copied()
                    .unwrap_or(usize::MAX),
                rule.source.rule_index,
                e.matched,
            )
        };
        for l in &mut t.listeners {
            for b in l.http.values_mut() {
                for v in b
                    .exact
                    .values_mut()
                    .chain(b.prefix.values_mut())
                    .chain(std::iter::once(&mut b.regex))
                {
                    v.sort_by_cached_key(http_key);
                    v.dedup();
                }
            }
            for v in l.grpc.values_mut() {
                v.sort_by_cached_key(grpc_key);
                v.dedup();
            }
        }
    }

    // ---------------------------------------------------------------- status

    fn status(&self, routes: &[RouteStatusIn<'m>], now: &Time) -> StatusReport {
        let mut items = Vec::new();
        for g in &self.gws {
            let gen = g.generation;
            let programmed_any = g.listeners.iter().any(|l| l.id.is_some());
            let mut gconds = vec![g.accepted.clone()];
            gconds.push(if g.accepted.ok && programmed_any {
                Cond::new("Programmed", true, "Programmed", "Gateway programmed")
            } else {
                Cond::new(
                    "Programmed",
                    false,
                    "Invalid",
                    "no listener could be programmed",
                )
            });
            // ResolvedRefs: the Gateway's own references (backend client certificate),
            // then a summary of the listeners' ResolvedRefs.
            let unresolved: Vec<&str> = g
                .listeners
                .iter()
                .filter(|l| !l.resolved.ok)
                .map(|l| l.name.as_str())
                .collect();
            gconds.push(match &g.resolved {
                Some(r) if !r.ok => r.clone(),
                _ if !unresolved.is_empty() => Cond::new(
                    "ResolvedRefs",
                    false,
                    "ListenersNotResolved",
                    format!(
                        "listeners with unresolved references: {}",
                        unresolved.join(", ")
                    ),
                ),
                Some(r) => r.clone(),
                None => Cond::new("ResolvedRefs", true, "ResolvedRefs", "references resolved"),
            });
            if insecure_frontend_validation(g.gw) {
                gconds.push(Cond::new(
                    "InsecureFrontendValidationMode",
                    true,
                    "ConfigurationChanged",
                    "client certificate validation allows insecure fallback",
                ));
            }
            let listeners = g
                .listeners
                .iter()
                .map(|l| {
                    let programmed = if l.id.is_some() {
                        Cond::new("Programmed", true, "Programmed", "listener programmed")
                    } else {
                        Cond::new("Programmed", false, "Invalid", "listener not programmed")
                    };
                    let mut lconds = vec![
                        l.accepted.clone(),
                        programmed,
                        l.resolved.clone(),
                        l.conflicted.clone(),
                    ];
                    if l.overlapping_tls {
                        lconds.push(Cond::new(
                            "OverlappingTLSConfig",
                            true,
                            "OverlappingHostnames",
                            "another HTTPS/TLS listener on this port has an overlapping hostname",
                        ));
                    }
                    GatewayStatusListeners {
                        attached_routes: i32::try_from(l.attached.len()).unwrap_or(i32::MAX),
                        conditions: conditions(&lconds, gen, now),
                        name: l.name.clone(),
                        supported_kinds: Some(
                            l.kinds
                                .iter()
                                .map(|k| GatewayStatusListenersSupportedKinds {
                                    group: Some(GROUP.to_string()),
                                    kind: k.name().to_string(),
                                })
                                .collect(),
                        ),
                    }
                })
                .collect();
            // Every address the listeners are bound to, requested or assigned.
            let addresses = (g.accepted.ok && programmed_any)
                .then(|| g.addrs.iter().map(GwAddr::status).collect());
            items.push(item(
                "Gateway",
                g.gw.metadata.clone(),
                ObjectStatus::Gateway(GatewayStatus {
                    addresses,
                    attached_listener_sets: None,
                    conditions: Some(conditions(&gconds, gen, now)),
                    listeners: Some(listeners),
                }),
            ));
        }
        let ctrl = &self.opts.controller_name;
        for (r, parents) in routes {
            let gen = gen_of(r.meta);
            let status = match r.kind {
                RouteKind::Http => ObjectStatus::HttpRoute(HttpRouteStatus {
                    parents: parents
                        .iter()
                        .map(|(p, c)| HttpRouteStatusParents {
                            conditions: conditions(c, gen, now),
                            controller_name: ctrl.clone(),
                            parent_ref: HttpRouteStatusParentsParentRef {
                                group: p.group.clone(),
                                kind: p.kind.clone(),
                                name: p.name.clone(),
                                namespace: p.namespace.clone(),
                                port: p.port,
                                section_name: p.section_name.clone(),
                            },
                        })
                        .collect(),
                }),
                RouteKind::Grpc => ObjectStatus::GrpcRoute(GrpcRouteStatus {
                    parents: parents
                        .iter()
                        .map(|(p, c)| GrpcRouteStatusParents {
                            conditions: conditions(c, gen, now),
                            controller_name: ctrl.clone(),
                            parent_ref: GrpcRouteStatusParentsParentRef {
                                group: p.group.clone(),
                                kind: p.kind.clone(),
                                name: p.name.clone(),
                                namespace: p.namespace.clone(),
                                port: p.port,
                                section_name: p.section_name.clone(),
                            },
                        })
                        .collect(),
                }),
                RouteKind::Tls => ObjectStatus::TlsRoute(TlsRouteStatus {
                    parents: parents
                        .iter()
                        .map(|(p, c)| TlsRouteStatusParents {
                            conditions: conditions(c, gen, now),
                            controller_name: ctrl.clone(),
                            parent_ref: TlsRouteStatusParentsParentRef {
                                group: p.group.clone(),
                                kind: p.kind.clone(),
                                name: p.name.clone(),
                                namespace: p.namespace.clone(),
                                port: p.port,
                                section_name: p.section_name.clone(),
                            },
                        })
                        .collect(),
                }),
            };
            items.push(item(r.kind.name(), r.meta.clone(), status));
        }
        for (pi, p) in self.ix.m.backend_tls_policies.iter().enumerate() {
            let st = &self.policies[pi];
            let gen = gen_of(&p.obj.metadata);
            let ancestors = st
                .ancestors
                .iter()
                .map(|&gi| {
                    let g = &self.gws[gi];
                    BackendTlsPolicyStatusAncestors {
                        ancestor_ref: BackendTlsPolicyStatusAncestorsAncestorRef {
                            group: Some(GROUP.to_string()),
                            kind: Some("Gateway".to_string()),
                            name: g.name.to_string(),
                            namespace: Some(g.ns.to_string()),
                            port: None,
                            section_name: None,
                        },
                        conditions: conditions(
                            &[st.accepted.clone(), st.resolved.clone()],
                            gen,
                            now,
                        ),
                        controller_name: ctrl.clone(),
                    }
                })
                .collect();
            items.push(item(
                "BackendTLSPolicy",
                p.obj.metadata.clone(),
                ObjectStatus::BackendTlsPolicy(BackendTlsPolicyStatus { ancestors }),
            ));
        }
        StatusReport { items }
    }
}

fn item(kind: &str, meta: ObjectMeta, status: ObjectStatus) -> StatusItem {
    StatusItem {
        api_version: API_VERSION.to_string(),
        kind: kind.to_string(),
        metadata: StatusMetadata {
            name: name_of(&meta).to_string(),
            namespace: ns_of(&meta).to_string(),
            generation: gen_of(&meta),
        },
        status,
    }
}

/// Does the Gateway's `spec.tls.frontend` (default or a per-port override) use
/// `AllowInsecureFallback` client certificate validation?
fn insecure_frontend_validation(gw: &Gateway) -> bool {
    let Some(f) = gw.spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) else {
        return false;
    };
    let default = f.default.validation.as_ref().is_some_and(|v| {
        matches!(
            v.mode,
            Some(GatewayTlsFrontendDefaultValidationMode::AllowInsecureFallback)
        )
    });
    let per_port = f.per_port.iter().flatten().any(|p| {
        p.tls.validation.as_ref().is_some_and(|v| {
            matches!(
                v.mode,
                Some(GatewayTlsFrontendPerPortTlsValidationMode::AllowInsecureFallback)
            )
        })
    });
    default || per_port
}

/// Why an HTTPRoute rule is invalid: a match that does not compile (bad regex), a
/// filter type gatewayd does not implement, or a malformed duration. `ExtensionRef` is
/// not here: its rule stays and answers with an error.
fn http_rule_problem(
    rule: &gateway_api::experimental::httproutes::HttpRouteRules,
) -> Option<String> {
    for m in rule.matches.iter().flatten() {
        if let Err(e) = compile_match(m) {
            return Some(e);
        }
    }
    for (i, f) in rule.filters.iter().flatten().enumerate() {
        if let Some(p) = filter_problem(f) {
            return Some(format!("filters[{i}]: {p}"));
        }
    }
    for (bi, b) in rule.backend_refs.iter().flatten().enumerate() {
        if let Some(p) = weight_problem(b.weight) {
            return Some(format!("backendRefs[{bi}].{p}"));
        }
        match backend_filters(b) {
            Err(e) => return Some(e),
            Ok(fs) => {
                for (i, f) in fs.iter().enumerate() {
                    if let Some(p) = filter_problem(f) {
                        return Some(format!("backendRefs[{bi}].filters[{i}]: {p}"));
                    }
                }
            }
        }
    }
    if let Some(t) = &rule.timeouts {
        for d in [&t.request, &t.backend_request].into_iter().flatten() {
            if parse_duration(d).is_err() {
                return Some(format!("invalid duration {d:?}"));
            }
        }
    }
    if let Some(r) = &rule.retry {
        if let Some(c) = r.codes.iter().flatten().find(|c| !(400..=599).contains(*c)) {
            return Some(format!(
                "retry code {c} is not an HTTP error status (400-599)"
            ));
        }
        if let Some(a) = r.attempts.filter(|a| *a < 0) {
            return Some(format!("retry attempts {a} is negative"));
        }
        if let Some(b) = r.backoff.as_deref().filter(|b| parse_duration(b).is_err()) {
            return Some(format!("invalid retry backoff {b:?}"));
        }
    }
    None
}

/// Why one filter cannot be applied: a type gatewayd does not implement, or a type
/// without its configuration (`type: RequestHeaderModifier` and no
/// `requestHeaderModifier`), which the CRD's validation would have refused.
fn filter_problem(f: &HttpRouteRulesFilters) -> Option<String> {
    use HttpRouteRulesFiltersType as T;
    let (present, ty, field) = match f.r#type {
        T::RequestHeaderModifier => (
            f.request_header_modifier.is_some(),
            "RequestHeaderModifier",
            "requestHeaderModifier",
        ),
        T::ResponseHeaderModifier => (
            f.response_header_modifier.is_some(),
            "ResponseHeaderModifier",
            "responseHeaderModifier",
        ),
        T::RequestRedirect => (
            f.request_redirect.is_some(),
            "RequestRedirect",
            "requestRedirect",
        ),
        T::UrlRewrite => (f.url_rewrite.is_some(), "URLRewrite", "urlRewrite"),
        T::RequestMirror => (f.request_mirror.is_some(), "RequestMirror", "requestMirror"),
        T::ExtensionRef => (f.extension_ref.is_some(), "ExtensionRef", "extensionRef"),
        ref other => {
            // The manifest's spelling (`CORS`), not the Rust variant's.
            let name = serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{other:?}"));
            return Some(format!("filter {name} is not supported"));
        }
    };
    (!present).then(|| format!("filter type {ty} without its `{field}` field"))
}

/// A backendRef's filters as rule filters (the two types have the same fields).
fn backend_filters(
    b: &gateway_api::experimental::httproutes::HttpRouteRulesBackendRefs,
) -> Result<Vec<HttpRouteRulesFilters>, String> {
    as_rule_filters(b.filters.as_deref().unwrap_or(&[]))
        .map_err(|(i, e)| format!("backendRefs filter {i} of {}: {e}", b.name))
}

/// Why a GRPCRoute rule is invalid: a match that does not compile (bad regex), or a
/// filter without its configuration. `ExtensionRef` is not here: its rule stays and
/// answers with an error.
fn grpc_rule_problem(rule: &GrpcRouteRules) -> Option<String> {
    for (i, m) in rule.matches.iter().flatten().enumerate() {
        if let Err(e) = compile_grpc_match(m) {
            return Some(format!("matches[{i}].{e}"));
        }
    }
    fn filters<F: serde::Serialize>(fs: Option<&[F]>, at: &str) -> Option<String> {
        let fs = match as_rule_filters(fs.unwrap_or(&[])) {
            Ok(fs) => fs,
            Err((i, e)) => return Some(format!("{at}filters[{i}]: {e}")),
        };
        fs.iter()
            .enumerate()
            .find_map(|(i, f)| filter_problem(f).map(|p| format!("{at}filters[{i}]: {p}")))
    }
    if let Some(p) = filters(rule.filters.as_deref(), "") {
        return Some(p);
    }
    rule.backend_refs
        .iter()
        .flatten()
        .enumerate()
        .find_map(|(bi, b)| {
            weight_problem(b.weight)
                .map(|p| format!("backendRefs[{bi}].{p}"))
                .or_else(|| filters(b.filters.as_deref(), &format!("backendRefs[{bi}].")))
        })
}

/// A backendRef weight outside the CRD's range (0 to 1,000,000).
fn weight_problem(weight: Option<i32>) -> Option<String> {
    let w = weight?;
    (u32::try_from(w).map_or(true, |w| w > MAX_WEIGHT))
        .then(|| format!("weight {w} is outside 0-{MAX_WEIGHT}"))
}

/// A GRPCRoute match: service and method (exact or regular expression; empty or absent
/// matches any), and headers. The error names the field.
fn compile_grpc_match(m: &GrpcRouteRulesMatches) -> Result<GrpcMatch, String> {
    let re = m
        .method
        .as_ref()
        .and_then(|mm| mm.r#type.as_ref())
        .is_some_and(|t| matches!(t, GrpcRouteRulesMatchesMethodType::RegularExpression));
    let part = |v: Option<&str>, field: &str| {
        v.filter(|s| !s.is_empty())
            .map(|s| string_match(s, re).map_err(|e| format!("method.{field}: {e}")))
            .transpose()
    };
    let method = m.method.as_ref();
    let service = part(method.and_then(|mm| mm.service.as_deref()), "service")?;
    let method = part(method.and_then(|mm| mm.method.as_deref()), "method")?;
    let headers = m
        .headers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, h)| {
            let re = matches!(
                h.r#type,
                Some(GrpcRouteRulesMatchesHeadersType::RegularExpression)
            );
            string_match(&h.value, re)
                .map(|v| (h.name.to_ascii_lowercase().into(), v))
                .map_err(|e| format!("headers[{i}]: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(GrpcMatch {
        service,
        method,
        headers: headers.into_boxed_slice(),
    })
}

/// Filters of another type with the same fields (an HTTPRoute backendRef's, a GRPCRoute
/// rule's or backendRef's, whose types are a subset) as HTTPRoute rule filters. The error
/// is the index and reason of the first that does not convert.
fn as_rule_filters<F: serde::Serialize>(
    fs: &[F],
) -> Result<Vec<HttpRouteRulesFilters>, (usize, String)> {
    fs.iter()
        .enumerate()
        .map(|(i, f)| {
            serde_json::to_value(f)
                .and_then(serde_json::from_value)
                .map_err(|e| (i, e.to_string()))
        })
        .collect()
}

/// The `protocol` field a listener was declared with (`TLS` for both TLS modes).
fn spec_protocol(p: ListenerProtocol) -> &'static str {
    match p {
        ListenerProtocol::Http => "HTTP",
        ListenerProtocol::Https => "HTTPS",
        ListenerProtocol::TlsTerminate | ListenerProtocol::TlsPassthrough => "TLS",
    }
}

/// Do two listener hostnames match a common host? No hostname matches every host.
fn hostnames_overlap(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => hostname::intersect(Some(a), b).is_some(),
        _ => true,
    }
}

/// Listener conflicts within one Gateway on a shared port (spec `Gateway.listeners`,
/// "Handling indistinct Listeners"), and overlapping TLS configuration.
///
/// * Plain HTTP and a TLS protocol on one port cannot be told apart: `ProtocolConflict`.
/// * Two listeners with the same hostname are indistinct: `HostnameConflict` when they
///   declare the same protocol (the TLS mode does not make them distinct), else
///   `ProtocolConflict` (HTTPS and TLS on one hostname: the SNI cannot choose).
/// * No conflicting listener is picked as a winner: every one of them is Conflicted and
///   not Accepted (reason `Invalid`, as the conformance suite expects).
/// * Terminating listeners whose hostnames overlap get `OverlappingTLSConfig`
///   (`OverlappingHostnames`), which does not stop them from being served.
fn conflicts(ls: &mut [LState]) {
    let n = ls.len();
    for i in 0..n {
        for j in 0..n {
            if i == j || ls[i].port != ls[j].port {
                continue;
            }
            let (Some(a), Some(b)) = (ls[i].protocol, ls[j].protocol) else {
                continue;
            };
            let same_host = ls[i].hostname == ls[j].hostname;
            if a.is_tls() != b.is_tls() || (same_host && spec_protocol(a) != spec_protocol(b)) {
                ls[i].conflicted = Cond::new(
                    "Conflicted",
                    true,
                    "ProtocolConflict",
                    format!(
                        "port {} is used with another protocol by listener {}",
                        ls[i].port, ls[j].name
                    ),
                );
            } else if same_host && ls[i].conflicted.reason == "NoConflicts" {
                ls[i].conflicted = Cond::new(
                    "Conflicted",
                    true,
                    "HostnameConflict",
                    format!(
                        "listener {} on port {} has the same hostname",
                        ls[j].name, ls[i].port
                    ),
                );
            }
            let terminates = |p: ListenerProtocol| {
                matches!(p, ListenerProtocol::Https | ListenerProtocol::TlsTerminate)
            };
            if terminates(a)
                && terminates(b)
                && hostnames_overlap(ls[i].hostname.as_deref(), ls[j].hostname.as_deref())
            {
                ls[i].overlapping_tls = true;
            }
        }
    }
    for l in ls.iter_mut() {
        if l.conflicted.ok && l.accepted.ok {
            l.accepted = Cond::new(
                "Accepted",
                false,
                "Invalid",
                format!(
                    "listener conflicts with another listener: {}",
                    l.conflicted.message
                ),
            );
        }
    }
}

fn header_mod<'a>(
    set: impl Iterator<Item = (&'a str, &'a str)>,
    add: impl Iterator<Item = (&'a str, &'a str)>,
    remove: impl Iterator<Item = &'a String>,
) -> HeaderModifier {
    HeaderModifier {
        set: set
            .map(|(n, v)| (n.to_ascii_lowercase().into(), v.into()))
            .collect(),
        add: add
            .map(|(n, v)| (n.to_ascii_lowercase().into(), v.into()))
            .collect(),
        remove: remove.map(|n| n.to_ascii_lowercase().into()).collect(),
    }
}

fn string_match(v: &str, regex: bool) -> Result<StringMatch, String> {
    if regex {
        regex::Regex::new(&format!("^(?:{v})$"))
            .map(StringMatch::Regex)
            .map_err(|e| format!("invalid regular expression {v:?}: {e}"))
    } else {
        Ok(StringMatch::Exact(v.into()))
    }
}

fn compile_match(m: &HttpRouteRulesMatches) -> Result<HttpMatch, String> {
    let path = match &m.path {
        None => PathMatch::Prefix("".into()),
        Some(p) => {
            let v = p.value.as_deref().unwrap_or("/");
            match p
                .r#type
                .as_ref()
                .unwrap_or(&HttpRouteRulesMatchesPathType::PathPrefix)
            {
                HttpRouteRulesMatchesPathType::Exact => PathMatch::Exact(v.into()),
                HttpRouteRulesMatchesPathType::PathPrefix => {
                    PathMatch::Prefix(v.trim_end_matches('/').into())
                }
                HttpRouteRulesMatchesPathType::RegularExpression => match string_match(v, true)? {
                    StringMatch::Regex(r) => PathMatch::Regex(r),
                    StringMatch::Exact(e) => PathMatch::Exact(e),
                },
            }
        }
    };
    let method = m.method.as_ref().map(|x| {
        match x {
            HttpRouteRulesMatchesMethod::Get => "GET",
            HttpRouteRulesMatchesMethod::Head => "HEAD",
            HttpRouteRulesMatchesMethod::Post => "POST",
            HttpRouteRulesMatchesMethod::Put => "PUT",
            HttpRouteRulesMatchesMethod::Delete => "DELETE",
            HttpRouteRulesMatchesMethod::Connect => "CONNECT",
            HttpRouteRulesMatchesMethod::Options => "OPTIONS",
            HttpRouteRulesMatchesMethod::Trace => "TRACE",
            HttpRouteRulesMatchesMethod::Patch => "PATCH",
        }
        .into()
    });
    // Only the first entry for a header/parameter name counts (spec).
    let mut headers: Vec<(Box<str>, StringMatch)> = Vec::new();
    for h in m.headers.iter().flatten() {
        let name: Box<str> = h.name.to_ascii_lowercase().into();
        if headers.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let re = matches!(
            h.r#type,
            Some(HttpRouteRulesMatchesHeadersType::RegularExpression)
        );
        headers.push((name, string_match(&h.value, re)?));
    }
    let mut query: Vec<(Box<str>, StringMatch)> = Vec::new();
    for q in m.query_params.iter().flatten() {
        let name: Box<str> = q.name.as_str().into();
        if query.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let re = matches!(
            q.r#type,
            Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression)
        );
        query.push((name, string_match(&q.value, re)?));
    }
    Ok(HttpMatch {
        path,
        method,
        headers: headers.into_boxed_slice(),
        query: query.into_boxed_slice(),
    })
}

/// GEP-2257 duration; `Ok(None)` for zero (disabled).
fn parse_duration(s: &str) -> Result<Option<Duration>, String> {
    let d = gateway_api::Duration::from_str(s)?;
    if d.is_zero() {
        return Ok(None);
    }
    Ok(Some(Duration::new(d.as_secs(), d.subsec_nanos())))
}
