//! Command line: `gatewayd run` and `gatewayd check` (the external contract of DESIGN §2).

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::ebpf::EbpfMode;

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

    #[test]
    fn check_requires_a_config() {
        assert!(Cli::try_parse_from(["gatewayd", "check"]).is_err());
    }
}
