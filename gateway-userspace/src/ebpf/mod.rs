//! Loading, attaching and reading the kernel programs embedded in `gatewayd`.
//!
//! The object is built by `build.rs` from `gateway-ebpf`. [`Dataplane::start`] loads it,
//! attaches `xdp_flow` to every `--xdp-iface` (driver mode, falling back to generic), and
//! keeps the maps userspace reads. Dropping the [`Dataplane`] detaches every program.

mod flow;

use std::{fmt, str::FromStr};

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf,
};
use gateway_common::{FlowKey, FlowValue, Stats, MAP_FLOWS, MAP_STATS, PROG_XDP_FLOW};
use tracing::{info, warn};

pub use flow::Flow;

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

/// Why the kernel programs are not running.
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

/// Where `xdp_flow` runs on one interface.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Attachment {
    pub iface: String,
    /// `driver` (native XDP) or `generic` (SKB mode).
    pub mode: &'static str,
}

/// Global counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsTotal {
    pub packets: u64,
    pub bytes: u64,
    pub parse_failures: u64,
    pub non_ip: u64,
}

/// The loaded programs and the maps userspace reads. Programs detach when it is dropped.
pub struct Dataplane {
    flows: HashMap<MapData, FlowKey, FlowValue>,
    stats: PerCpuArray<MapData, Stats>,
    attachments: Vec<Attachment>,
    /// Owns the programs and their links; must outlive nothing else here but is kept last
    /// so that maps are closed after the programs detach.
    _ebpf: Ebpf,
}

impl fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataplane")
            .field("attachments", &self.attachments)
            .finish_non_exhaustive()
    }
}

impl Dataplane {
    /// Loads the embedded object and attaches `xdp_flow` to each interface in `ifaces`.
    pub fn start(ifaces: &[String]) -> Result<Self, EbpfError> {
        if OBJECT.is_empty() {
            return Err(EbpfError::NotBuilt);
        }
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| EbpfError::Load { reason: chain(&e) })?;
        let program: &mut Xdp = ebpf
            .program_mut(PROG_XDP_FLOW)
            .ok_or(EbpfError::MissingProgram {
                name: PROG_XDP_FLOW,
            })?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| EbpfError::Load { reason: chain(&e) })?;
        program
            .load()
            .map_err(|e| EbpfError::Load { reason: chain(&e) })?;

        let mut attachments = Vec::with_capacity(ifaces.len());
        for iface in ifaces {
            let mode = match program.attach(iface, XdpMode::Driver) {
                Ok(_) => "driver",
                Err(driver_err) => {
                    info!(iface = %iface, reason = %chain(&driver_err), "native XDP unavailable, trying generic mode");
                    program
                        .attach(iface, XdpMode::Skb)
                        .map_err(|e| EbpfError::Attach {
                            program: PROG_XDP_FLOW,
                            iface: iface.clone(),
                            reason: chain(&e),
                        })?;
                    "generic"
                }
            };
            info!(iface = %iface, mode, "attached {PROG_XDP_FLOW}");
            attachments.push(Attachment {
                iface: iface.clone(),
                mode,
            });
        }

        let flows = ebpf
            .take_map(MAP_FLOWS)
            .ok_or(EbpfError::MissingMap { name: MAP_FLOWS })?;
        let flows = HashMap::try_from(flows).map_err(|e| EbpfError::Map {
            name: MAP_FLOWS,
            reason: chain(&e),
        })?;
        let stats = ebpf
            .take_map(MAP_STATS)
            .ok_or(EbpfError::MissingMap { name: MAP_STATS })?;
        let stats = PerCpuArray::try_from(stats).map_err(|e| EbpfError::Map {
            name: MAP_STATS,
            reason: chain(&e),
        })?;
        Ok(Self {
            flows,
            stats,
            attachments,
            _ebpf: ebpf,
        })
    }

    /// Starts the dataplane as `mode` says. `Ok(None)`: running without eBPF.
    pub fn start_with_mode(mode: EbpfMode, ifaces: &[String]) -> Result<Option<Self>, EbpfError> {
        match mode {
            EbpfMode::Off => {
                info!("eBPF off (--ebpf off)");
                Ok(None)
            }
            EbpfMode::Required => Self::start(ifaces).map(Some),
            EbpfMode::Auto => match Self::start(ifaces) {
                Ok(dataplane) => Ok(Some(dataplane)),
                Err(err) => {
                    warn!("eBPF unavailable, serving from userspace only (--ebpf auto): {err}");
                    Ok(None)
                }
            },
        }
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// `STATS` summed over every CPU.
    pub fn stats(&self) -> Result<StatsTotal, EbpfError> {
        let per_cpu = self.stats.get(&0, 0).map_err(|e| EbpfError::Map {
            name: MAP_STATS,
            reason: chain(&e),
        })?;
        Ok(per_cpu
            .iter()
            .fold(StatsTotal::default(), |acc, s| StatsTotal {
                packets: acc.packets + s.packets,
                bytes: acc.bytes + s.bytes,
                parse_failures: acc.parse_failures + s.parse_failures,
                non_ip: acc.non_ip + s.non_ip,
            }))
    }

    /// Every entry of `FLOWS`. Entries that vanish while the map is walked are skipped.
    pub fn flows(&self) -> Vec<Flow> {
        self.flows
            .iter()
            .filter_map(Result::ok)
            .map(|(key, value)| Flow::new(&key, &value))
            .collect()
    }

    /// Number of entries in `FLOWS` (its capacity is `FLOWS_MAX_ENTRIES`).
    pub fn flow_count(&self) -> usize {
        self.flows.keys().filter(Result::is_ok).count()
    }
}
