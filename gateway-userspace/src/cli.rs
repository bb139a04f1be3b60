//! Command line: `gatewayd run` and `gatewayd check` (the external contract of DESIGN §2).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    ebpf::{
        sync::{SyncOptions, DEFAULT_FLOW_IDLE_TIMEOUT},
        Acl, AclError, DataplaneOptions, EbpfMode, SynRateLimit,
    },
    http::ForwardedHeaders,
    upstream::{PoolLimits, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS},
    worker::WorkerOptions,
};

pub const DEFAULT_CONTROLLER_NAME: &str = "gateway.networking.example/gatewayd";

#[derive(Debug, Parser)]
#[command(
    name = "gatewayd",
    version,
    about = "Gateway API dataplane: eBPF flow tracking, TLS, HTTP routing"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Gateways of the given manifests.
    Run(RunArgs),
    /// Parse and resolve the manifests, print their status as YAML, and exit: 0 when the
    /// input parsed (bad references are statuses), 1 when it is unreadable or ill-formed.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Files or directories of YAML manifests (repeatable).
    #[arg(long = "config", value_name = "PATH", required = true, num_args = 1..)]
    pub config: Vec<PathBuf>,

    /// Only Gateways whose GatewayClass names this controller are served (when the input
    /// has no GatewayClass at all, every Gateway is).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_CONTROLLER_NAME)]
    pub controller_name: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,

    /// Address of the admin HTTP server.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,

    /// auto: load the eBPF programs when possible, else warn and serve without them;
    /// off: never touch BPF; required: exit with the kernel's reason when they cannot load.
    #[arg(long, value_name = "auto|off|required", default_value = "auto")]
    pub ebpf: EbpfMode,

    /// Interfaces to attach the XDP program to (repeatable).
    #[arg(long = "xdp-iface", value_name = "IFACE", num_args = 1..)]
    pub xdp_iface: Vec<String>,

    /// Worker threads for the data path (default: number of CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,

    /// What requests to backends say about the client: x-forwarded (X-Forwarded-For,
    /// appended, -Proto and -Host), forwarded (RFC 7239 `Forwarded`, appended), both, or
    /// none (the client's own headers pass through unchanged).
    #[arg(
        long,
        value_name = "x-forwarded|forwarded|both|none",
        default_value = "x-forwarded"
    )]
    pub forwarded_headers: ForwardedHeaders,

    /// Seconds a backend connection with no request on it is kept before it is closed
    /// (pooled HTTP/1.1 connections and shared HTTP/2 ones).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs_f64(), value_parser = parse_backend_idle_timeout)]
    pub backend_idle_timeout: f64,

    /// HTTP/1.1 connections open at once (idle or in use) per backend endpoint and
    /// worker; at the limit a request waits up to 5 s for one to come free, then gets 503.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS as u32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub backend_max_connections: u32,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

/// Default `--bpf-pin-dir`.
pub const DEFAULT_BPF_PIN_DIR: &str = "/sys/fs/bpf/gatewayd";

/// What the eBPF programs filter and keep. Effective only with eBPF on.
#[derive(Debug, Args)]
pub struct KernelArgs {
    /// Drop, in XDP, TCP and UDP packets to the gateway's addresses on ports no listener
    /// serves (the kernel's ephemeral port range excepted, for replies to the host's own
    /// connections).
    #[arg(long)]
    pub xdp_drop_unlisted: bool,

    /// File of denied source CIDRs, one per line, `#` comments; dropped in XDP. Reloaded
    /// when it changes and on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub acl: Option<PathBuf>,

    /// SYN-flood guard: at most PER_SEC TCP SYNs per second from one source address, BURST
    /// at once (default BURST = PER_SEC). Off by default.
    #[arg(long, value_name = "PER_SEC[:BURST]")]
    pub syn_rate_limit: Option<SynRateLimit>,

    /// bpffs directory to pin the flow table in, so a restart keeps it (a bpffs is mounted
    /// when there is none); `none` turns pinning off.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BPF_PIN_DIR)]
    pub bpf_pin_dir: PathBuf,

    /// Seconds without a packet after which a flow is removed from the flow table.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_FLOW_IDLE_TIMEOUT.as_secs_f64(), value_parser = parse_idle_timeout)]
    pub flow_idle_timeout: f64,
}

/// Seconds within `range` for `flag`, or an error naming the flag, the value and `expected`.
fn parse_seconds(
    s: &str,
    flag: &str,
    range: std::ops::RangeInclusive<f64>,
    expected: &str,
) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(secs) if range.contains(&secs) => Ok(secs),
        _ => Err(format!(
            "invalid {flag} {s:?}: expected seconds, {expected}"
        )),
    }
}

fn parse_idle_timeout(s: &str) -> Result<f64, String> {
    parse_seconds(
        s,
        "--flow-idle-timeout",
        0.1..=86_400.0 * 365.0,
        "at least 0.1",
    )
}

fn parse_backend_idle_timeout(s: &str) -> Result<f64, String> {
    parse_seconds(
        s,
        "--backend-idle-timeout",
        0.1..=86_400.0,
        "from 0.1 to 86400",
    )
}

impl RunArgs {
    /// What the data-path workers are started with.
    pub fn worker_options(&self) -> WorkerOptions {
        WorkerOptions {
            forwarded: self.forwarded_headers,
            pools: PoolLimits {
                idle_timeout: Duration::from_secs_f64(self.backend_idle_timeout),
                max_connections: usize::try_from(self.backend_max_connections)
                    .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            },
        }
    }
}

impl KernelArgs {
    /// The dataplane's options for `ifaces` and `workers` data-path workers, reading the
    /// ACL file (an unreadable or invalid file is an error: gatewayd refuses to start on it).
    pub fn dataplane_options(
        &self,
        ifaces: &[String],
        workers: usize,
    ) -> Result<DataplaneOptions, AclError> {
        let acl = self.acl.as_deref().map(Acl::load).transpose()?;
        Ok(DataplaneOptions {
            ifaces: ifaces.to_vec(),
            pin_dir: (self.bpf_pin_dir.as_os_str() != "none").then(|| self.bpf_pin_dir.clone()),
            drop_unlisted: self.xdp_drop_unlisted,
            syn_rate_limit: self.syn_rate_limit,
            acl,
            workers,
        })
    }

    pub fn sync_options(&self) -> SyncOptions {
        SyncOptions {
            acl_path: self.acl.clone(),
            flow_idle_timeout: Duration::from_secs_f64(self.flow_idle_timeout),
        }
    }

    /// Whether any filter was asked for (to warn when eBPF is off).
    pub fn filters_requested(&self) -> bool {
        self.xdp_drop_unlisted || self.acl.is_some() || self.syn_rate_limit.is_some()
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_accepts_every_documented_flag() {
        let cli = Cli::try_parse_from([
            "gatewayd",
            "run",
            "--config",
            "a.yaml",
            "--config",
            "dir/",
            "--admin",
            "127.0.0.1:9902",
            "--ebpf",
            "required",
            "--xdp-iface",
            "eth0",
            "--xdp-iface",
            "eth1",
            "--workers",
            "3",
            "--controller-name",
            "example.com/gw",
            "--backend-idle-timeout",
            "2.5",
            "--backend-max-connections",
            "64",
        ]);
        let Ok(Cli {
            command: Command::Run(args),
        }) = cli
        else {
            panic!("run did not parse: {cli:?}");
        };
        assert_eq!(
            args.config.config,
            vec![PathBuf::from("a.yaml"), PathBuf::from("dir/")]
        );
        assert_eq!(args.admin.to_string(), "127.0.0.1:9902");
        assert_eq!(args.ebpf, EbpfMode::Required);
        assert_eq!(args.xdp_iface, vec!["eth0", "eth1"]);
        assert_eq!(args.workers, Some(3));
        assert_eq!(args.config.controller_name, "example.com/gw");
        assert_eq!(
            args.worker_options().pools.idle_timeout,
            Duration::from_millis(2500)
        );
        assert_eq!(args.worker_options().pools.max_connections, 64);
    }

    #[test]
    fn defaults_match_the_contract() {
        let cli = Cli::try_parse_from(["gatewayd", "run", "--config", "a.yaml"]);
        let Ok(Cli {
            command: Command::Run(args),
        }) = cli
        else {
            panic!("run did not parse: {cli:?}");
        };
        assert_eq!(args.admin.to_string(), "127.0.0.1:9901");
        assert_eq!(args.ebpf, EbpfMode::Auto);
        assert!(args.xdp_iface.is_empty());
        assert_eq!(args.config.controller_name, DEFAULT_CONTROLLER_NAME);
        assert_eq!(
            args.worker_options().pools.idle_timeout,
            Duration::from_secs(30)
        );
        assert_eq!(args.worker_options().pools.max_connections, 1024);
    }

    #[test]
    fn bad_ebpf_mode_is_refused_with_the_choices() {
        let err = Cli::try_parse_from(["gatewayd", "run", "--config", "a", "--ebpf", "sometimes"])
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("auto, off or required"), "{err}");
    }

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["gatewayd", "run", "--config", "a.yaml"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Run(args),
            }) => args,
            other => panic!("run did not parse: {other:?}"),
        }
    }

    #[test]
    fn kernel_flags_default_to_counting_only_with_a_pinned_flow_table() {
        let args = run_args(&[]);
        assert!(!args.kernel.xdp_drop_unlisted);
        assert_eq!(args.kernel.acl, None);
        assert_eq!(args.kernel.syn_rate_limit, None);
        assert_eq!(
            args.kernel.bpf_pin_dir,
            PathBuf::from("/sys/fs/bpf/gatewayd")
        );
        let options = args
            .kernel
            .dataplane_options(&["eth0".into()], 2)
            .expect("no ACL to read");
        assert_eq!(options.pin_dir, Some(PathBuf::from("/sys/fs/bpf/gatewayd")));
        assert_eq!(
            args.kernel.sync_options().flow_idle_timeout,
            Duration::from_secs(300)
        );
        assert!(!args.kernel.filters_requested());
    }

    #[test]
    fn kernel_flags_are_parsed() {
        let dir = std::env::temp_dir().join(format!("gatewayd-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let acl = dir.join("acl.txt");
        std::fs::write(
            &acl,
            "10.0.0.0/8
",
        )
        .expect("write ACL");
        let acl_arg = acl.to_string_lossy().into_owned();
        let args = run_args(&[
            "--xdp-drop-unlisted",
            "--acl",
            &acl_arg,
            "--syn-rate-limit",
            "50:100",
            "--bpf-pin-dir",
            "none",
            "--flow-idle-timeout",
            "2.5",
        ]);
        let options = args.kernel.dataplane_options(&[], 4).expect("ACL reads");
        assert_eq!(options.workers, 4);
        assert!(options.drop_unlisted);
        assert_eq!(
            options.syn_rate_limit,
            Some(SynRateLimit {
                per_sec: 50,
                burst: 100
            })
        );
        assert_eq!(options.pin_dir, None);
        assert_eq!(options.acl.map(|a| a.prefixes.len()), Some(1));
        assert_eq!(
            args.kernel.sync_options().flow_idle_timeout,
            Duration::from_millis(2500)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_syn_rate_or_idle_timeout_is_refused() {
        for extra in [
            ["--syn-rate-limit", "0"],
            ["--syn-rate-limit", "ten"],
            ["--flow-idle-timeout", "0"],
            ["--flow-idle-timeout", "-3"],
            ["--backend-idle-timeout", "0"],
            ["--backend-idle-timeout", "NaN"],
            ["--backend-idle-timeout", "100000"],
            ["--backend-max-connections", "0"],
            ["--backend-max-connections", "many"],
        ] {
            let mut argv = vec!["gatewayd", "run", "--config", "a"];
            argv.extend_from_slice(&extra);
            assert!(Cli::try_parse_from(argv).is_err(), "{extra:?}");
        }
    }

    #[test]
    fn check_requires_a_config() {
        assert!(Cli::try_parse_from(["gatewayd", "check"]).is_err());
    }
}
