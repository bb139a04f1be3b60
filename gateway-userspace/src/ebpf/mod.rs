//! Loading, attaching and feeding the kernel programs embedded in `gatewayd`.
//!
//! The object is built by `build.rs` from `gateway-ebpf`. [`Dataplane::start`] loads it
//! (reusing the pinned flow table under `--bpf-pin-dir` when there is one), writes the
//! filter configuration and the ACL, then attaches `xdp_flow` (driver mode, falling back
//! to generic) and `tc_reply` (TC egress: TCX, falling back to a clsact qdisc) to every
//! `--xdp-iface`. It also attaches `sk_lookup_steer` to the network namespace and loads
//! `sk_reuseport_pick` for the listeners' `SO_REUSEPORT` groups ([`steer`]). [`sync`] keeps
//! the maps in step with the configuration: the listener table on every reload, the ACL
//! file, the host's addresses, flow-table GC, and the listening sockets to steer to.
//!
//! Under `--ebpf auto` a feature the kernel or the privileges refuse (one interface, TC,
//! pinning, sk_lookup, sk_reuseport) is turned off with one warning and the rest runs.
//! Dropping the [`Dataplane`] detaches every program and removes the clsact qdiscs it
//! created ([`clsact`]), as does a start that fails halfway; the pinned flow table stays
//! (the `sk_reuseport` program goes with the listening sockets it is attached to).

mod acl;
mod clsact;
mod flow;
mod host;
mod listener;
mod maps;
mod pin;
pub mod steer;
pub mod sync;

use std::{
    collections::BTreeSet,
    fmt,
    fs::File,
    net::IpAddr,
    path::PathBuf,
    str::FromStr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use aya::{
    maps::MapType,
    programs::{
        tc::{self, NlOptions, TcAttachOptions},
        LinkOrder, ProgramFd, SchedClassifier, SkLookup, SkReuseport, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use gateway_common::{
    AddrKey, DataplaneConfig, DropReason, FlowKey, FlowValue, CONFIG_ACL_V4, CONFIG_ACL_V6,
    CONFIG_DROP_UNLISTED, CONFIG_RANGES, CONFIG_SYN_GUARD, FLOWS_MAX_ENTRIES, MAP_ACL_V4,
    MAP_ACL_V6, MAP_FLOWS, MAP_GATEWAY_ADDRS, MAP_SOCKETS, PROG_SK_LOOKUP_STEER,
    PROG_SK_REUSEPORT_PICK, PROG_TC_REPLY, PROG_XDP_FLOW, REUSEPORT_WORKERS_MAX, SOCKET_SLOTS,
    STATS_TC, STATS_XDP,
};
use gateway_config::RouteTable;
use tracing::{info, warn};

pub use acl::{Acl, AclError, AclLineError, Prefix};
pub use flow::{Flow, FlowQuery, FlowQueryError};
pub use steer::{BindSockets, DrainRefused, SocketCounters, SocketSync};

use maps::Maps;

/// The eBPF object built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));

/// The embedded eBPF object (ELF), for tools and tests that load it themselves.
pub fn object() -> &'static [u8] {
    OBJECT
}

/// `--ebpf`: what to do about the kernel programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EbpfMode {
    /// Load when possible; otherwise warn once and serve from userspace alone.
    #[default]
    Auto,
    /// Never touch BPF.
    Off,
    /// Exit with the kernel's reason when the programs cannot be loaded or attached.
    Required,
}

impl FromStr for EbpfMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            "required" => Ok(Self::Required),
            other => Err(format!(
                "invalid --ebpf value {other:?}: expected auto, off or required"
            )),
        }
    }
}

impl fmt::Display for EbpfMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Off => "off",
            Self::Required => "required",
        })
    }
}

/// `--syn-rate-limit PER_SEC[:BURST]`: SYNs a source may send per second, and at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynRateLimit {
    pub per_sec: u32,
    pub burst: u32,
}

impl FromStr for SynRateLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("invalid --syn-rate-limit {s:?}: expected PER_SEC[:BURST], e.g. 100 or 100:200, both at least 1")
        };
        let (rate, burst) = match s.split_once(':') {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (s, None),
        };
        let per_sec: u32 = rate.parse().map_err(|_| bad())?;
        let burst: u32 = match burst {
            Some(burst) => burst.parse().map_err(|_| bad())?,
            None => per_sec,
        };
        if per_sec == 0 || burst == 0 || per_sec > 1_000_000_000 {
            return Err(bad());
        }
        Ok(Self { per_sec, burst })
    }
}

impl SynRateLimit {
    /// GCRA parameters: nanoseconds per SYN, and how far ahead a source may run.
    pub fn gcra(&self) -> (u64, u64) {
        let interval = 1_000_000_000 / u64::from(self.per_sec);
        (interval, interval * u64::from(self.burst - 1))
    }
}

/// Everything the command line says about the kernel side.
#[derive(Clone, Debug, Default)]
pub struct DataplaneOptions {
    /// Interfaces to attach `xdp_flow` and `tc_reply` to.
    pub ifaces: Vec<String>,
    /// bpffs directory to pin the flow table in; `None`: no pinning.
    pub pin_dir: Option<PathBuf>,
    /// `--xdp-drop-unlisted`.
    pub drop_unlisted: bool,
    /// `--syn-rate-limit`; `None`: the SYN guard is off.
    pub syn_rate_limit: Option<SynRateLimit>,
    /// The ACL read at start-up (`--acl`).
    pub acl: Option<Acl>,
    /// Data-path workers (`--workers`): one listening socket each per bind, among which
    /// `sk_reuseport_pick` chooses. 0 is taken as 1.
    pub workers: usize,
}

impl DataplaneOptions {
    /// Counting only: attach to `ifaces`, no pinning, no filter.
    pub fn ifaces(ifaces: &[String]) -> Self {
        Self {
            ifaces: ifaces.to_vec(),
            ..Self::default()
        }
    }
}

/// Why the kernel programs (or one of their features) are not running.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("this gatewayd was built without its eBPF object (AYA_BUILD_SKIP)")]
    NotBuilt,
    #[error("loading the eBPF object failed: {reason}")]
    Load { reason: String },
    #[error("eBPF object has no program {name}")]
    MissingProgram { name: &'static str },
    #[error("eBPF object has no map {name}")]
    MissingMap { name: &'static str },
    #[error("attaching {program} to interface {iface} failed: {reason}")]
    Attach {
        program: &'static str,
        iface: String,
        reason: String,
    },
    #[error("reading map {name} failed: {reason}")]
    Map { name: &'static str, reason: String },
    #[error("invalid GATEWAYD_TC_MODE {value:?}: expected tcx or clsact")]
    TcMode { value: String },
}

/// Formats an error with all of its sources, so that the kernel's errno reaches the user.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        out.push_str(": ");
        out.push_str(&err.to_string());
        source = err.source();
    }
    out
}

/// Where a program runs on one interface.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Attachment {
    pub iface: String,
    /// `xdp` or `tc`.
    pub hook: &'static str,
    /// xdp: `driver` (native XDP) or `generic` (SKB mode); tc: `tcx` or `clsact`.
    pub mode: &'static str,
}

/// A kernel-side feature and whether it runs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub on: bool,
}

/// Counters of one program summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProgramStats {
    pub packets: u64,
    pub bytes: u64,
    pub parse_failures: u64,
    pub non_ip: u64,
}

/// Counters of one listener summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ListenerCounters {
    pub id: u32,
    /// `addr:port`, or `192.0.2.0/24:8080` for a range.
    pub listener: String,
    pub protocol: &'static str,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// What `/metrics` shows of the kernel side, beyond the attachments and the flow count.
/// The top-level packet counters are `xdp_flow`'s.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsTotal {
    pub packets: u64,
    pub bytes: u64,
    pub parse_failures: u64,
    pub non_ip: u64,
    /// `tc_reply`'s counters.
    pub tc: ProgramStats,
    /// `(reason, packets dropped)` for every [`DropReason`].
    pub drops: Vec<(&'static str, u64)>,
    pub listeners: Vec<ListenerCounters>,
    /// The socket programs (`sk_lookup_steer`, `sk_reuseport_pick`).
    pub sockets: SocketCounters,
    pub features: Vec<Feature>,
    /// Entries in `GATEWAY_ADDRS` and the gateway range tries.
    pub gateway_addrs: usize,
    pub acl_v4_prefixes: usize,
    pub acl_v6_prefixes: usize,
    pub acl_reloads: u64,
    pub acl_reload_errors: u64,
    pub flows_gc_evicted: u64,
    pub listener_syncs: u64,
    pub listener_sync_errors: u64,
}

/// Counters the sync task keeps.
#[derive(Default)]
struct Counters {
    gc_evicted: AtomicU64,
    acl_reloads: AtomicU64,
    acl_reload_errors: AtomicU64,
    listener_syncs: AtomicU64,
    listener_sync_errors: AtomicU64,
}

/// The maps and what userspace last wrote into them.
struct Inner {
    maps: Maps,
    slots: listener::Slots,
    /// `LISTENER_PORTS` as written.
    ports: Vec<u64>,
    /// The listener plan of the serving configuration (to recompute the gateway's
    /// addresses when the host's change).
    plan: Vec<listener::Planned>,
    gateway_addrs: BTreeSet<AddrKey>,
    /// The gateway's address ranges in `GATEWAY_RANGES_V4/V6`.
    gateway_ranges: BTreeSet<(IpAddr, u8)>,
    acl: Acl,
    config: DataplaneConfig,
    /// The socket programs' maps (`sk_lookup`, `sk_reuseport`).
    steering: steer::Steering,
}

/// State shared by the [`Dataplane`] (admin reads) and its [`DataplaneHandle`]s (sync).
struct Shared {
    inner: Mutex<Inner>,
    features: Vec<Feature>,
    counters: Counters,
    drop_unlisted: bool,
}

/// The loaded programs and the maps userspace reads. Programs detach when it is dropped.
pub struct Dataplane {
    shared: Arc<Shared>,
    attachments: Vec<Attachment>,
    /// Dropping it detaches the programs and removes the clsact qdiscs gatewayd created.
    _programs: Programs,
}

/// The object with its programs and links, and the clsact qdiscs gatewayd created for
/// them. Held from the load on, so that a start-up failing halfway cleans up as an exit
/// does.
struct Programs {
    /// Owns the programs and their links; dropping it detaches them. `None` only while
    /// it is dropped.
    ebpf: Option<Ebpf>,
    /// Interfaces (name, index) on which gatewayd created the clsact qdisc for `tc_reply`.
    clsact_created: Vec<(String, u32)>,
}

impl Programs {
    fn ebpf(&mut self) -> &mut Ebpf {
        self.ebpf
            .as_mut()
            .expect("invariant: the object is only taken when Programs is dropped")
    }
}

impl Drop for Programs {
    /// Detaches every program first (gatewayd's own filter on a clsact qdisc goes with
    /// `tc_reply`'s link), then removes the clsact qdiscs gatewayd created, unless a filter
    /// someone else added is on one.
    fn drop(&mut self) {
        drop(self.ebpf.take());
        for (iface, index) in &self.clsact_created {
            match clsact::remove_if_unused(*index) {
                Ok(clsact::Removal::Removed) => {
                    info!(iface = %iface, "removed the clsact qdisc gatewayd created")
                }
                Ok(clsact::Removal::AlreadyGone) => {
                    info!(iface = %iface, "the clsact qdisc gatewayd created was already gone")
                }
                Ok(clsact::Removal::InUse) => {
                    info!(iface = %iface, "clsact qdisc left in place: other filters use it")
                }
                Err(err) => {
                    warn!(iface = %iface, error = %err, "clsact qdisc gatewayd created left in place")
                }
            }
        }
    }
}

/// The maps of a running [`Dataplane`], for the task that keeps them in step with the
/// configuration. Holding one does not keep the programs attached.
#[derive(Clone)]
pub struct DataplaneHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataplane")
            .field("attachments", &self.attachments)
            .finish_non_exhaustive()
    }
}

/// A poisoned lock only means a thread panicked while holding it; the maps are kernel
/// objects and the mirrors are rewritten whole, so carry on.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

fn addr_key(addr: IpAddr) -> AddrKey {
    let (family, addr) = listener::family_and_addr(addr);
    AddrKey {
        family,
        addr,
        ..AddrKey::default()
    }
}

/// The gateway's own addresses: every explicit single-address listener address, and
/// every address of the host for a family some listener binds unspecified.
fn gateway_addrs(plan: &[listener::Planned], host: &BTreeSet<IpAddr>) -> BTreeSet<AddrKey> {
    let any_v4 = plan
        .iter()
        .any(|p| p.entry.addr.is_ipv4() && p.entry.addr.is_unspecified());
    let any_v6 = plan
        .iter()
        .any(|p| p.entry.addr.is_ipv6() && p.entry.addr.is_unspecified());
    let explicit = plan
        .iter()
        .filter(|p| p.prefix_len.is_none() && !p.entry.addr.is_unspecified())
        .map(|p| p.entry.addr);
    let from_host = host
        .iter()
        .filter(|a| (a.is_ipv4() && any_v4) || (a.is_ipv6() && any_v6))
        .copied();
    explicit.chain(from_host).map(addr_key).collect()
}

/// The gateway's address ranges.
fn gateway_ranges(plan: &[listener::Planned]) -> BTreeSet<(IpAddr, u8)> {
    plan.iter()
        .filter_map(|p| p.prefix_len.map(|len| (p.entry.addr, len)))
        .collect()
}

/// Warnings for features that failed, printed only once the object loaded (when the whole
/// of eBPF is unavailable, that one warning says it all).
struct Degraded {
    mode: EbpfMode,
    warnings: Vec<String>,
}

impl Degraded {
    /// A feature failed: an error under `--ebpf required`, else a warning for later.
    fn feature(&mut self, err: EbpfError, what: &str) -> Result<(), EbpfError> {
        if self.mode == EbpfMode::Required {
            return Err(err);
        }
        self.warnings
            .push(format!("{what} off (--ebpf auto): {err}"));
        Ok(())
    }
}

impl Dataplane {
    /// Loads the embedded object and attaches both programs to each interface in `ifaces`,
    /// counting only. See [`Dataplane::start_with_mode`].
    pub fn start(ifaces: &[String]) -> Result<Self, EbpfError> {
        Self::start_with(EbpfMode::Required, &DataplaneOptions::ifaces(ifaces))
    }

    /// Starts the dataplane as `mode` says. `Ok(None)`: running without eBPF.
    pub fn start_with_mode(
        mode: EbpfMode,
        options: &DataplaneOptions,
    ) -> Result<Option<Self>, EbpfError> {
        match mode {
            EbpfMode::Off => {
                info!("eBPF off (--ebpf off)");
                Ok(None)
            }
            EbpfMode::Required => Self::start_with(mode, options).map(Some),
            EbpfMode::Auto => match Self::start_with(mode, options) {
                Ok(dataplane) => Ok(Some(dataplane)),
                Err(err) => {
                    warn!("eBPF unavailable, serving from userspace only (--ebpf auto): {err}");
                    Ok(None)
                }
            },
        }
    }

    fn start_with(mode: EbpfMode, options: &DataplaneOptions) -> Result<Self, EbpfError> {
        if OBJECT.is_empty() {
            return Err(EbpfError::NotBuilt);
        }
        let mut degraded = Degraded {
            mode,
            warnings: Vec::new(),
        };
        // Checked before anything is loaded: a bad value fails fast under `required`.
        let tc_mode = TcMode::for_mode(mode)?;

        let workers = options.workers.max(1);
        let (ebpf, pinned) = load_object(options.pin_dir.as_deref(), workers, &mut degraded)?;
        // From here on every early return detaches what was attached and removes the
        // clsact qdiscs created so far.
        let mut programs = Programs {
            ebpf: Some(ebpf),
            clsact_created: Vec::new(),
        };
        let xdp: &mut Xdp = program_of(programs.ebpf(), PROG_XDP_FLOW)?;
        xdp.load()
            .map_err(|e| EbpfError::Load { reason: chain(&e) })?;
        let tc_loaded = match load_tc(programs.ebpf()) {
            Ok(()) => true,
            Err(err) => {
                degraded.feature(err, "counting replies (TC egress)")?;
                false
            }
        };

        let sk_lookup_loaded = match load_sk_lookup(programs.ebpf()) {
            Ok(()) => true,
            Err(err) => {
                degraded.feature(err, "steering unbound addresses (sk_lookup)")?;
                false
            }
        };
        let reuseport = if workers > REUSEPORT_WORKERS_MAX as usize {
            // A limit of the maps, not a refusal: never fatal.
            degraded.warnings.push(format!(
                "choosing workers in the kernel (sk_reuseport) off: {workers} workers, at most {REUSEPORT_WORKERS_MAX}; the kernel's hash spreads connections and workers cannot drain"
            ));
            None
        } else {
            match load_sk_reuseport(programs.ebpf()) {
                Ok(fd) => Some(fd),
                Err(err) => {
                    degraded.feature(err, "choosing workers in the kernel (sk_reuseport)")?;
                    None
                }
            }
        };

        // Filters and the ACL are in place before the first packet is seen.
        let maps = Maps::take(programs.ebpf())?;
        let socket_maps = steer::SocketMaps::take(programs.ebpf())?;
        // The live-worker list is written before the program can run on any group.
        let reuseport_on = reuseport.is_some();
        let steering = steer::Steering::new(socket_maps, workers, false, reuseport)?;
        let (ephemeral_low, ephemeral_high) = host::ephemeral_ports();
        let (syn_interval_ns, syn_tolerance_ns) =
            options.syn_rate_limit.map_or((0, 0), |limit| limit.gcra());
        let mut inner = Inner {
            maps,
            slots: listener::Slots::default(),
            ports: vec![0; gateway_common::LISTENER_PORT_WORDS as usize],
            plan: Vec::new(),
            gateway_addrs: BTreeSet::new(),
            gateway_ranges: BTreeSet::new(),
            acl: Acl::default(),
            config: DataplaneConfig {
                flags: if options.drop_unlisted {
                    CONFIG_DROP_UNLISTED
                } else {
                    0
                } | if options.syn_rate_limit.is_some() {
                    CONFIG_SYN_GUARD
                } else {
                    0
                },
                ephemeral_low,
                ephemeral_high,
                syn_interval_ns,
                syn_tolerance_ns,
            },
            steering,
        };
        inner.maps.set_config(&inner.config)?;
        if let Some(acl) = &options.acl {
            apply_acl(&mut inner, acl)?;
        }

        let mut attachments = Vec::with_capacity(options.ifaces.len() * 2);
        let mut xdp_everywhere = true;
        let mut tc_everywhere = tc_loaded;
        for iface in &options.ifaces {
            match attach_xdp(programs.ebpf(), iface) {
                Ok(mode) => {
                    info!(iface = %iface, mode, "attached {PROG_XDP_FLOW}");
                    attachments.push(Attachment {
                        iface: iface.clone(),
                        hook: "xdp",
                        mode,
                    });
                }
                Err(err) => {
                    degraded.feature(err, &format!("XDP on {iface}"))?;
                    xdp_everywhere = false;
                    // Replies alone would make one-sided flows: leave TC off there too.
                    continue;
                }
            }
            if !tc_loaded {
                continue;
            }
            if host::is_loopback(iface) {
                // Every packet on loopback is received too, so xdp_flow already sees both
                // directions; counting egress as well would count each packet twice.
                info!(iface = %iface, "{PROG_TC_REPLY} not attached: loopback traffic is all seen by {PROG_XDP_FLOW}");
                continue;
            }
            match attach_tc(programs.ebpf(), iface, tc_mode) {
                Ok((mode, created)) => {
                    if let Some(index) = created {
                        programs.clsact_created.push((iface.clone(), index));
                    }
                    info!(iface = %iface, mode, "attached {PROG_TC_REPLY} (TC egress)");
                    attachments.push(Attachment {
                        iface: iface.clone(),
                        hook: "tc",
                        mode,
                    });
                }
                Err(err) => {
                    degraded.feature(err, &format!("counting replies (TC egress) on {iface}"))?;
                    tc_everywhere = false;
                }
            }
        }
        // Attached last: from here on it sees every new TCP connection of the namespace,
        // and misses pass until the socket sync writes the steering maps.
        let sk_lookup_on = sk_lookup_loaded
            && match attach_sk_lookup(programs.ebpf()) {
                Ok(()) => {
                    info!("attached {PROG_SK_LOOKUP_STEER} to the network namespace");
                    true
                }
                Err(err) => {
                    degraded.feature(err, "steering unbound addresses (sk_lookup)")?;
                    false
                }
            };
        inner.steering.steer_on = sk_lookup_on;
        for warning in &degraded.warnings {
            warn!("{warning}");
        }

        let features = vec![
            Feature {
                name: "xdp",
                on: xdp_everywhere,
            },
            Feature {
                name: "tc",
                on: tc_everywhere,
            },
            Feature {
                name: "pinning",
                on: pinned,
            },
            Feature {
                name: "acl",
                on: options.acl.is_some(),
            },
            Feature {
                name: "drop_unlisted",
                on: options.drop_unlisted,
            },
            Feature {
                name: "syn_guard",
                on: options.syn_rate_limit.is_some(),
            },
            Feature {
                name: "sk_lookup",
                on: sk_lookup_on,
            },
            Feature {
                name: "sk_reuseport",
                on: reuseport_on,
            },
        ];
        Ok(Self {
            shared: Arc::new(Shared {
                inner: Mutex::new(inner),
                features,
                counters: Counters::default(),
                drop_unlisted: options.drop_unlisted,
            }),
            attachments,
            _programs: programs,
        })
    }

    /// A handle on the maps for the sync task.
    pub fn handle(&self) -> DataplaneHandle {
        DataplaneHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Every counter `/metrics` shows, summed over CPUs.
    pub fn stats(&self) -> Result<StatsTotal, EbpfError> {
        let shared = &self.shared;
        let inner = lock(&shared.inner);
        let xdp = inner.maps.stats(STATS_XDP)?;
        let tc = inner.maps.stats(STATS_TC)?;
        let drops = DropReason::ALL
            .iter()
            .map(|reason| Ok((reason.name(), inner.maps.drops(*reason as u32)?)))
            .collect::<Result<Vec<_>, EbpfError>>()?;
        let listeners = inner
            .slots
            .iter()
            .map(|(_, slot)| {
                let s = inner.maps.listener_stats(slot.id)?;
                Ok(ListenerCounters {
                    id: slot.id,
                    listener: slot.label(),
                    protocol: slot.protocol_name(),
                    rx_packets: s.rx_packets,
                    rx_bytes: s.rx_bytes,
                    tx_packets: s.tx_packets,
                    tx_bytes: s.tx_bytes,
                })
            })
            .collect::<Result<Vec<_>, EbpfError>>()?;
        let sockets = inner.steering.counters()?;
        let counters = &shared.counters;
        Ok(StatsTotal {
            packets: xdp.packets,
            bytes: xdp.bytes,
            parse_failures: xdp.parse_failures,
            non_ip: xdp.non_ip,
            tc: ProgramStats {
                packets: tc.packets,
                bytes: tc.bytes,
                parse_failures: tc.parse_failures,
                non_ip: tc.non_ip,
            },
            drops,
            listeners,
            sockets,
            features: shared.features.clone(),
            gateway_addrs: inner.gateway_addrs.len() + inner.gateway_ranges.len(),
            acl_v4_prefixes: inner.acl.v4_len(),
            acl_v6_prefixes: inner.acl.v6_len(),
            acl_reloads: counters.acl_reloads.load(Ordering::Relaxed),
            acl_reload_errors: counters.acl_reload_errors.load(Ordering::Relaxed),
            flows_gc_evicted: counters.gc_evicted.load(Ordering::Relaxed),
            listener_syncs: counters.listener_syncs.load(Ordering::Relaxed),
            listener_sync_errors: counters.listener_sync_errors.load(Ordering::Relaxed),
        })
    }

    /// Every entry of `FLOWS`, listeners named. Entries that vanish while the map is
    /// walked are skipped.
    pub fn flows(&self) -> Vec<Flow> {
        let inner = lock(&self.shared.inner);
        inner
            .maps
            .flows
            .iter()
            .filter_map(Result::ok)
            .map(|(key, value)| {
                Flow::new(&key, &value)
                    .with_listener(|id| inner.slots.by_id(id).map(listener::Slot::label))
            })
            .collect()
    }

    /// Number of entries in `FLOWS` (its capacity is `FLOWS_MAX_ENTRIES`).
    pub fn flow_count(&self) -> usize {
        lock(&self.shared.inner)
            .maps
            .flows
            .keys()
            .filter(Result::is_ok)
            .count()
    }
}

/// Loads the object, with `FLOWS` pinned under `pin_dir` when it can be. Returns whether
/// it is pinned.
fn load_object(
    pin_dir: Option<&std::path::Path>,
    workers: usize,
    degraded: &mut Degraded,
) -> Result<(Ebpf, bool), EbpfError> {
    // One `SOCKETS` row of `workers` sockets per socket slot.
    let socket_entries = SOCKET_SLOTS
        .saturating_mul(u32::try_from(workers.min(REUSEPORT_WORKERS_MAX as usize)).unwrap_or(1));
    let loader = || {
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(MAP_SOCKETS, socket_entries);
        loader
    };
    let Some(dir) = pin_dir else {
        let ebpf = loader()
            .load(OBJECT)
            .map_err(|e| EbpfError::Load { reason: chain(&e) })?;
        return Ok((ebpf, false));
    };
    let pin_path = dir.join(MAP_FLOWS);
    let prepared = pin::prepare(dir).and_then(|()| {
        pin::remove_if_incompatible(
            &pin_path,
            &pin::Expected {
                map_type: MapType::LruHash,
                key_size: size_of::<FlowKey>() as u32,
                value_size: size_of::<FlowValue>() as u32,
                max_entries: FLOWS_MAX_ENTRIES,
            },
        )
    });
    let pin_err = match prepared {
        Ok(removed) => {
            if removed {
                warn!(path = %pin_path.display(), "the pinned flow table has another layout (an older gatewayd?): starting a new one");
            }
            match loader()
                .map_pin_path(MAP_FLOWS, pin_path.as_path())
                .load(OBJECT)
            {
                Ok(ebpf) => {
                    info!(path = %pin_path.display(), "flow table pinned");
                    return Ok((ebpf, true));
                }
                Err(err) => chain(&err),
            }
        }
        Err(err) => chain(&err),
    };
    // Without the pin, the object may still load: pinning alone is off then.
    let ebpf = loader()
        .load(OBJECT)
        .map_err(|e| EbpfError::Load { reason: chain(&e) })?;
    degraded.warnings.push(format!(
        "pinning the flow table in {} off, it will not survive a restart: {pin_err}",
        dir.display()
    ));
    Ok((ebpf, false))
}

/// The program `name` of the object, as its type `P`.
fn program_of<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, EbpfError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(EbpfError::MissingProgram { name })?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| EbpfError::Load { reason: chain(&e) })
}

fn load_tc(ebpf: &mut Ebpf) -> Result<(), EbpfError> {
    let program: &mut SchedClassifier = program_of(ebpf, PROG_TC_REPLY)?;
    program
        .load()
        .map_err(|e| EbpfError::Load { reason: chain(&e) })
}

fn load_sk_lookup(ebpf: &mut Ebpf) -> Result<(), EbpfError> {
    let program: &mut SkLookup = program_of(ebpf, PROG_SK_LOOKUP_STEER)?;
    program
        .load()
        .map_err(|e| EbpfError::Load { reason: chain(&e) })
}

/// Attaches `sk_lookup_steer` to gatewayd's network namespace; the link goes with the
/// `Ebpf` (dropping it detaches).
fn attach_sk_lookup(ebpf: &mut Ebpf) -> Result<(), EbpfError> {
    let attach_err = |reason: String| EbpfError::Attach {
        program: PROG_SK_LOOKUP_STEER,
        iface: "the network namespace".to_owned(),
        reason,
    };
    let netns = File::open("/proc/self/ns/net").map_err(|e| attach_err(e.to_string()))?;
    let program: &mut SkLookup = program_of(ebpf, PROG_SK_LOOKUP_STEER)?;
    program
        .attach(netns)
        .map(|_| ())
        .map_err(|e| attach_err(chain(&e)))
}

/// Loads `sk_reuseport_pick`; a descriptor of it to attach to `SO_REUSEPORT` groups.
fn load_sk_reuseport(ebpf: &mut Ebpf) -> Result<ProgramFd, EbpfError> {
    let program: &mut SkReuseport = program_of(ebpf, PROG_SK_REUSEPORT_PICK)?;
    program
        .load()
        .map_err(|e| EbpfError::Load { reason: chain(&e) })?;
    program
        .fd()
        .map_err(|e| EbpfError::Load { reason: chain(&e) })?
        .try_clone()
        .map_err(|e| EbpfError::Load {
            reason: format!("duplicating the {PROG_SK_REUSEPORT_PICK} descriptor: {e}"),
        })
}

/// Native XDP first, generic as the fallback.
fn attach_xdp(ebpf: &mut Ebpf, iface: &str) -> Result<&'static str, EbpfError> {
    let program: &mut Xdp = program_of(ebpf, PROG_XDP_FLOW)?;
    match program.attach(iface, XdpMode::Driver) {
        Ok(_) => Ok("driver"),
        Err(driver_err) => {
            info!(iface = %iface, reason = %chain(&driver_err), "native XDP unavailable, trying generic mode");
            program
                .attach(iface, XdpMode::Skb)
                .map_err(|e| EbpfError::Attach {
                    program: PROG_XDP_FLOW,
                    iface: iface.to_owned(),
                    reason: chain(&e),
                })?;
            Ok("generic")
        }
    }
}

/// The environment variable that chooses how `tc_reply` attaches.
const TC_MODE_VAR: &str = "GATEWAYD_TC_MODE";

/// How `tc_reply` attaches: `GATEWAYD_TC_MODE=clsact` skips TCX, for tools that only see
/// clsact filters (`tc filter show`) and for testing the fallback on a kernel with TCX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TcMode {
    /// TCX, else clsact.
    TcxFirst,
    /// clsact only.
    Clsact,
}

impl TcMode {
    /// `GATEWAYD_TC_MODE`; `Err` with the value when it is neither `tcx` nor `clsact`.
    fn from_env() -> Result<Self, String> {
        match std::env::var(TC_MODE_VAR) {
            Ok(value) => Self::parse(&value),
            Err(std::env::VarError::NotPresent) => Ok(Self::TcxFirst),
            Err(std::env::VarError::NotUnicode(value)) => Err(value.to_string_lossy().into_owned()),
        }
    }

    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "tcx" => Ok(Self::TcxFirst),
            "clsact" => Ok(Self::Clsact),
            other => Err(other.to_owned()),
        }
    }

    /// The mode `GATEWAYD_TC_MODE` asks for: an invalid value is an error under
    /// `--ebpf required` (a test or an operator asked for something gatewayd would not
    /// do) and a warning under `--ebpf auto`.
    fn for_mode(mode: EbpfMode) -> Result<Self, EbpfError> {
        match Self::from_env() {
            Ok(tc_mode) => Ok(tc_mode),
            Err(value) if mode == EbpfMode::Required => Err(EbpfError::TcMode { value }),
            Err(value) => {
                warn!(
                    value = %value,
                    "{TC_MODE_VAR} is tcx or clsact; using tcx (--ebpf auto)"
                );
                Ok(Self::TcxFirst)
            }
        }
    }
}

/// TCX (kernel 6.6+) first; else a clsact qdisc and a netlink filter. Returns the mode and,
/// when it created the clsact qdisc, the interface's index (to remove the qdisc on exit).
fn attach_tc(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: TcMode,
) -> Result<(&'static str, Option<u32>), EbpfError> {
    let program: &mut SchedClassifier = program_of(ebpf, PROG_TC_REPLY)?;
    let tcx_err = match mode {
        TcMode::Clsact => "skipped (GATEWAYD_TC_MODE=clsact)".to_owned(),
        TcMode::TcxFirst => match program.attach_with_options(
            iface,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        ) {
            Ok(_) => return Ok(("tcx", None)),
            Err(err) => chain(&err),
        },
    };
    // The add fails when the qdisc exists (it is someone else's then, and stays); any
    // other failure shows in the attach below.
    let ours = tc::qdisc_add_clsact(iface)
        .is_ok()
        .then(|| clsact::ifindex(iface).ok())
        .flatten();
    match program.attach_with_options(
        iface,
        TcAttachType::Egress,
        TcAttachOptions::Netlink(NlOptions::default()),
    ) {
        Ok(_) => Ok(("clsact", ours)),
        Err(e) => {
            if let Some(index) = ours {
                let _ = clsact::remove_if_unused(index);
            }
            Err(EbpfError::Attach {
                program: PROG_TC_REPLY,
                iface: iface.to_owned(),
                reason: format!("TCX: {tcx_err}; clsact: {}", chain(&e)),
            })
        }
    }
}

/// Brings the ACL tries to `acl`: new prefixes first, then the flags, then the removals,
/// so that no prefix in both the old and the new ACL is ever let through.
fn apply_acl(inner: &mut Inner, acl: &Acl) -> Result<(usize, usize), EbpfError> {
    let map_err = |name: &'static str| {
        move |e: aya::maps::MapError| EbpfError::Map {
            name,
            reason: chain(&e),
        }
    };
    let added: Vec<Prefix> = acl
        .prefixes
        .difference(&inner.acl.prefixes)
        .copied()
        .collect();
    let removed: Vec<Prefix> = inner
        .acl
        .prefixes
        .difference(&acl.prefixes)
        .copied()
        .collect();
    for prefix in &added {
        match prefix {
            Prefix::V4 { addr, len } => inner
                .maps
                .acl_v4
                .insert(&aya::maps::lpm_trie::Key::new(u32::from(*len), *addr), 1, 0)
                .map_err(map_err(MAP_ACL_V4))?,
            Prefix::V6 { addr, len } => inner
                .maps
                .acl_v6
                .insert(&aya::maps::lpm_trie::Key::new(u32::from(*len), *addr), 1, 0)
                .map_err(map_err(MAP_ACL_V6))?,
        }
        inner.acl.prefixes.insert(*prefix);
    }
    let mut flags = inner.config.flags & !(CONFIG_ACL_V4 | CONFIG_ACL_V6);
    if acl.v4_len() > 0 {
        flags |= CONFIG_ACL_V4;
    }
    if acl.v6_len() > 0 {
        flags |= CONFIG_ACL_V6;
    }
    // While removals are pending the old prefixes are still in the tries: keep looking.
    let during = flags | (inner.config.flags & (CONFIG_ACL_V4 | CONFIG_ACL_V6));
    if during != inner.config.flags {
        set_flags(inner, during)?;
    }
    for prefix in &removed {
        let result = match prefix {
            Prefix::V4 { addr, len } => inner
                .maps
                .acl_v4
                .remove(&aya::maps::lpm_trie::Key::new(u32::from(*len), *addr))
                .map_err(map_err(MAP_ACL_V4)),
            Prefix::V6 { addr, len } => inner
                .maps
                .acl_v6
                .remove(&aya::maps::lpm_trie::Key::new(u32::from(*len), *addr))
                .map_err(map_err(MAP_ACL_V6)),
        };
        result?;
        inner.acl.prefixes.remove(prefix);
    }
    if flags != inner.config.flags {
        set_flags(inner, flags)?;
    }
    Ok((added.len(), removed.len()))
}

/// Writes `CONFIG` with `flags`; the mirror takes them only once the kernel has, so that a
/// failed write is tried again by the next sync instead of being taken as done.
fn set_flags(inner: &mut Inner, flags: u32) -> Result<(), EbpfError> {
    let config = DataplaneConfig {
        flags,
        ..inner.config
    };
    inner.maps.set_config(&config)?;
    inner.config = config;
    Ok(())
}

/// What one listener sync changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerSync {
    pub written: usize,
    pub removed: usize,
    /// Listeners left out of the kernel table: it is full.
    pub overflow: usize,
}

impl DataplaneHandle {
    /// Brings `LISTENERS`, the listener range tries (and the gateway's addresses) to the
    /// listener plan of a new configuration's table: new and changed entries first, then
    /// removals, so a listener present before and after is never missing in between.
    pub fn sync_listeners(&self, table: &RouteTable) -> Result<ListenerSync, EbpfError> {
        // Read once: the range warning and `GATEWAY_ADDRS` both need the host's addresses.
        let host = self.shared.drop_unlisted.then(host::local_addresses);
        if let Some(host) = &host {
            warn_ranges_over_host(table, host);
        }
        let result = self.sync_listeners_inner(&listener::plan(table), host);
        let counters = &self.shared.counters;
        counters.listener_syncs.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            counters
                .listener_sync_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// `host`: the host's addresses, read when `--xdp-drop-unlisted` is on.
    fn sync_listeners_inner(
        &self,
        plan: &[listener::Planned],
        host: Option<std::io::Result<BTreeSet<IpAddr>>>,
    ) -> Result<ListenerSync, EbpfError> {
        let mut guard = lock(&self.shared.inner);
        let inner = &mut *guard;
        let wanted = listener::desired(plan);
        // The range tries are looked up while old or new listeners have ranges.
        let new_ranges = wanted.values().any(|w| w.prefix_len.is_some());
        let old_ranges = inner.config.flags & CONFIG_RANGES != 0;
        if new_ranges && !old_ranges {
            let flags = inner.config.flags | CONFIG_RANGES;
            set_flags(inner, flags)?;
        }
        let diff = inner.slots.diff(&wanted);
        // Ports of old and new listeners while both may be in the table; only the new
        // ones once the removals are done.
        let new_ports = listener::port_bitmap(wanted.keys());
        let during: Vec<u64> = inner
            .ports
            .iter()
            .zip(&new_ports)
            .map(|(old, new)| old | new)
            .collect();
        let mut ports = std::mem::take(&mut inner.ports);
        let widened = inner.maps.set_ports(&mut ports, &during);
        inner.ports = ports;
        widened?;
        let mut report = ListenerSync {
            overflow: diff.overflow,
            ..ListenerSync::default()
        };
        let mut first_err = None;
        for (key, slot, new) in diff.upserts {
            let old = inner.slots.get(&key).copied();
            let written = if new {
                inner.maps.zero_listener_stats(slot.id)
            } else {
                Ok(())
            }
            .and_then(|()| inner.maps.insert_listener(&key, &slot))
            .and_then(|()| match old {
                // A listener whose range changed (or that became or stopped being one)
                // lives under another key now: the old entry goes once the new one is in.
                // (Its address and port are the slot's key, so they did not change.)
                Some(old) if old.wanted.prefix_len != slot.wanted.prefix_len => {
                    inner.maps.remove_listener(&key, &old)
                }
                _ => Ok(()),
            });
            match written {
                Ok(()) => {
                    inner.slots.upserted(key, slot);
                    report.written += 1;
                }
                Err(err) => {
                    if new {
                        inner.slots.release(slot.id);
                    }
                    first_err.get_or_insert(err);
                }
            }
        }
        for key in diff.removes {
            let Some(old) = inner.slots.get(&key).copied() else {
                continue;
            };
            match inner.maps.remove_listener(&key, &old) {
                Ok(()) => {
                    inner.slots.removed(&key);
                    report.removed += 1;
                }
                Err(err) => {
                    first_err.get_or_insert(err);
                }
            }
        }
        let ranges_left = inner
            .slots
            .iter()
            .any(|(_, slot)| slot.wanted.prefix_len.is_some());
        if !ranges_left && inner.config.flags & CONFIG_RANGES != 0 {
            let flags = inner.config.flags & !CONFIG_RANGES;
            if let Err(err) = set_flags(inner, flags) {
                first_err.get_or_insert(err);
            }
        }
        let mut ports = std::mem::take(&mut inner.ports);
        let narrowed = inner.maps.set_ports(&mut ports, &new_ports);
        inner.ports = ports;
        if let Err(err) = narrowed {
            first_err.get_or_insert(err);
        }
        inner.plan = plan.to_vec();
        if let Some(host) = host {
            sync_gateway_addrs(inner, &host.map_err(host_addrs_err)?)?;
        }
        match first_err {
            Some(err) => Err(err),
            None => Ok(report),
        }
    }

    /// Re-reads what the host says (its addresses, the ephemeral port range) and updates
    /// `GATEWAY_ADDRS` and `CONFIG` when it changed.
    pub fn refresh_host(&self) -> Result<(), EbpfError> {
        if !self.shared.drop_unlisted {
            return Ok(());
        }
        let mut guard = lock(&self.shared.inner);
        let inner = &mut *guard;
        let (low, high) = host::ephemeral_ports();
        if (low, high) != (inner.config.ephemeral_low, inner.config.ephemeral_high) {
            let config = DataplaneConfig {
                ephemeral_low: low,
                ephemeral_high: high,
                ..inner.config
            };
            inner.maps.set_config(&config)?;
            inner.config = config;
        }
        let host = host::local_addresses().map_err(host_addrs_err)?;
        sync_gateway_addrs(inner, &host)
    }

    /// Replaces the ACL; returns (prefixes added, prefixes removed).
    pub fn apply_acl(&self, acl: &Acl) -> Result<(usize, usize), EbpfError> {
        let result = apply_acl(&mut lock(&self.shared.inner), acl);
        let counters = &self.shared.counters;
        match result {
            Ok(_) => counters.acl_reloads.fetch_add(1, Ordering::Relaxed),
            Err(_) => counters.acl_reload_errors.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    /// An ACL file that could not be read or parsed: counted, the old ACL stays.
    pub fn acl_reload_failed(&self) {
        self.shared
            .counters
            .acl_reload_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Brings the socket programs' maps to the listeners' sockets (see [`steer`]).
    pub fn sync_sockets(&self, plan: &[BindSockets]) -> Result<SocketSync, EbpfError> {
        lock(&self.shared.inner).steering.sync(plan)
    }

    /// Whether `sk_lookup_steer` runs, so that a bind on an address the host does not have
    /// can be served (its socket is bound with `IP_FREEBIND` and the address steered to it).
    pub fn steering_on(&self) -> bool {
        lock(&self.shared.inner).steering.steer_on
    }

    /// Whether `sk_reuseport_pick` runs (so workers can drain).
    pub fn reuseport_on(&self) -> bool {
        lock(&self.shared.inner).steering.reuseport_on()
    }

    /// Marks `worker` draining (no new connections) or not; `Ok(false)` when it already
    /// was. The last worker taking connections cannot drain unless `allow_none`
    /// (shutdown).
    pub fn set_draining(
        &self,
        worker: usize,
        draining: bool,
        allow_none: bool,
    ) -> Result<bool, DrainRefused> {
        lock(&self.shared.inner)
            .steering
            .set_draining(worker, draining, allow_none)
    }

    /// Deletes the flows idle for longer than `idle`; returns how many.
    pub fn collect_idle_flows(&self, idle: Duration) -> usize {
        let cutoff =
            monotonic_ns().saturating_sub(u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX));
        let mut inner = lock(&self.shared.inner);
        let stale: Vec<FlowKey> = inner
            .maps
            .flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, value)| value.last_seen_ns < cutoff)
            .map(|(key, _)| key)
            .collect();
        // A packet between the walk and the delete loses that flow's counts so far; the
        // next packet starts it again. Idle means idle for `idle`, so this is rare.
        let evicted = stale
            .iter()
            .filter(|key| inner.maps.flows.remove(key).is_ok())
            .count();
        drop(inner);
        self.shared
            .counters
            .gc_evicted
            .fetch_add(evicted as u64, Ordering::Relaxed);
        evicted
    }
}

/// A Gateway address range that covers an address of the host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RangeOverHost {
    gateway: String,
    range: (IpAddr, u8),
    host: IpAddr,
}

/// Every (Gateway, range, host address) where the range covers the address.
fn ranges_over_host(
    ranges: &BTreeSet<(String, IpAddr, u8)>,
    host: &BTreeSet<IpAddr>,
) -> Vec<RangeOverHost> {
    ranges
        .iter()
        .flat_map(|(gateway, net, len)| {
            host.iter()
                .filter(|addr| steer::contains(*net, *len, **addr))
                .map(|addr| RangeOverHost {
                    gateway: gateway.clone(),
                    range: (*net, *len),
                    host: *addr,
                })
        })
        .collect()
}

/// Under `--xdp-drop-unlisted`, one warning per (Gateway, range, host address) of the
/// table: XDP runs before routing, so a range that covers an address of the host (or one
/// the host forwards to) makes every port of that address that no listener serves
/// dropped, SSH included. Called once per configuration.
fn warn_ranges_over_host(table: &RouteTable, host: &std::io::Result<BTreeSet<IpAddr>>) {
    let ranges: BTreeSet<(String, IpAddr, u8)> = table
        .binds()
        .iter()
        .filter_map(|bind| Some((bind, bind.prefix_len?)))
        .flat_map(|(bind, len)| {
            bind.listeners.iter().filter_map(move |id| {
                let gateway = table.listener(*id)?.gateway.to_string();
                Some((gateway, bind.addr.ip(), len))
            })
        })
        .collect();
    if ranges.is_empty() {
        return;
    }
    let host = match host {
        Ok(host) => host,
        Err(err) => {
            warn!(error = %err, "listing the host's addresses to check the Gateway ranges under --xdp-drop-unlisted failed");
            return;
        }
    };
    for over in ranges_over_host(&ranges, host) {
        let (net, len) = over.range;
        warn!(
            gateway = %over.gateway,
            range = %format_args!("{net}/{len}"),
            host_addr = %over.host,
            "Gateway {} address range {net}/{len} contains {}, an address of this host: with --xdp-drop-unlisted, XDP drops TCP and UDP to it on every port no listener serves (SSH too), before routing",
            over.gateway,
            over.host
        );
    }
}

/// The host's addresses could not be listed, so `GATEWAY_ADDRS` could not be synced.
fn host_addrs_err(e: std::io::Error) -> EbpfError {
    EbpfError::Map {
        name: MAP_GATEWAY_ADDRS,
        reason: format!("listing the host's addresses: {e}"),
    }
}

/// Brings `GATEWAY_ADDRS` and the gateway range tries to the plan and the host's
/// addresses (adds first).
fn sync_gateway_addrs(inner: &mut Inner, host: &BTreeSet<IpAddr>) -> Result<(), EbpfError> {
    let wanted = gateway_addrs(&inner.plan, host);
    let ranges = gateway_ranges(&inner.plan);
    for range in ranges.difference(&inner.gateway_ranges.clone()) {
        inner.maps.set_gateway_range(*range, true)?;
        inner.gateway_ranges.insert(*range);
    }
    let map_err = |e: aya::maps::MapError| EbpfError::Map {
        name: MAP_GATEWAY_ADDRS,
        reason: chain(&e),
    };
    for key in wanted.difference(&inner.gateway_addrs.clone()) {
        inner
            .maps
            .gateway_addrs
            .insert(key, 1, 0)
            .map_err(map_err)?;
        inner.gateway_addrs.insert(*key);
    }
    for key in inner.gateway_addrs.clone().difference(&wanted) {
        inner.maps.gateway_addrs.remove(key).map_err(map_err)?;
        inner.gateway_addrs.remove(key);
    }
    for range in inner.gateway_ranges.clone().difference(&ranges) {
        inner.maps.set_gateway_range(*range, false)?;
        inner.gateway_ranges.remove(range);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_common::FAMILY_IPV4;
    use gateway_config::ListenerProtocol;

    #[test]
    fn a_range_over_a_host_address_is_named_with_its_gateway_and_the_address() {
        let ip = |a: &str| -> IpAddr { a.parse().expect("test address") };
        let ranges: BTreeSet<(String, IpAddr, u8)> = [
            ("infra/wide".to_owned(), ip("10.0.0.0"), 8),
            ("infra/v6".to_owned(), ip("2001:db8::"), 32),
            ("infra/apart".to_owned(), ip("192.0.2.0"), 24),
        ]
        .into();
        let host: BTreeSet<IpAddr> = [ip("10.1.2.3"), ip("127.0.0.1"), ip("2001:db8::7")].into();
        assert_eq!(
            ranges_over_host(&ranges, &host),
            [
                RangeOverHost {
                    gateway: "infra/v6".to_owned(),
                    range: (ip("2001:db8::"), 32),
                    host: ip("2001:db8::7"),
                },
                RangeOverHost {
                    gateway: "infra/wide".to_owned(),
                    range: (ip("10.0.0.0"), 8),
                    host: ip("10.1.2.3"),
                },
            ]
        );
        assert!(ranges_over_host(&ranges, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn tc_mode_is_tcx_or_clsact_and_anything_else_is_refused() {
        assert_eq!(TcMode::parse("tcx"), Ok(TcMode::TcxFirst));
        assert_eq!(TcMode::parse("clsact"), Ok(TcMode::Clsact));
        for bad in ["", "TCX", "netlink", "clsact "] {
            assert_eq!(TcMode::parse(bad), Err(bad.to_owned()));
        }
        let err = EbpfError::TcMode {
            value: "netlink".to_owned(),
        };
        assert_eq!(
            err.to_string(),
            "invalid GATEWAYD_TC_MODE \"netlink\": expected tcx or clsact"
        );
    }

    #[test]
    fn syn_rate_limit_parses_rate_and_optional_burst() {
        assert_eq!(
            "100".parse(),
            Ok(SynRateLimit {
                per_sec: 100,
                burst: 100
            })
        );
        assert_eq!(
            "5:20".parse(),
            Ok(SynRateLimit {
                per_sec: 5,
                burst: 20
            })
        );
        for bad in ["0", "5:0", "x", "5:", ":5", "-1"] {
            assert!(bad.parse::<SynRateLimit>().is_err(), "{bad}");
        }
        let (interval, tolerance) = SynRateLimit {
            per_sec: 4,
            burst: 3,
        }
        .gcra();
        assert_eq!((interval, tolerance), (250_000_000, 500_000_000));
    }

    fn entry(addr: &str, port: u16) -> listener::Planned {
        listener::Planned {
            entry: gateway_config::EbpfListenerEntry {
                addr: addr.parse().expect("test address"),
                port,
                protocol: ListenerProtocol::Http,
                tls: false,
                bind_index: 0,
            },
            prefix_len: None,
        }
    }

    #[test]
    fn a_range_is_one_of_the_gateways_ranges_not_an_address() {
        let range = listener::Planned {
            prefix_len: Some(24),
            ..entry("192.0.2.0", 80)
        };
        let plan = [range, entry("198.51.100.7", 80)];
        assert_eq!(
            gateway_addrs(&plan, &BTreeSet::new()),
            [addr_key("198.51.100.7".parse().expect("addr"))].into()
        );
        assert_eq!(
            gateway_ranges(&plan),
            [("192.0.2.0".parse().expect("addr"), 24)].into()
        );
    }

    #[test]
    fn unspecified_listeners_make_every_host_address_of_their_family_the_gateways() {
        let host: BTreeSet<IpAddr> = ["10.0.0.1", "127.0.0.1", "fd00::1"]
            .iter()
            .map(|a| a.parse().expect("test address"))
            .collect();
        let explicit = gateway_addrs(&[entry("192.0.2.1", 80)], &host);
        assert_eq!(
            explicit,
            [addr_key("192.0.2.1".parse().expect("addr"))].into()
        );
        let any_v4 = gateway_addrs(&[entry("0.0.0.0", 80)], &host);
        assert_eq!(
            any_v4.len(),
            2,
            "both IPv4 host addresses, not the IPv6 one"
        );
        assert!(any_v4.iter().all(|k| k.family == FAMILY_IPV4));
        let both = gateway_addrs(&[entry("0.0.0.0", 80), entry("::", 80)], &host);
        assert_eq!(both.len(), 3);
        assert!(gateway_addrs(&[], &host).is_empty());
    }
}
