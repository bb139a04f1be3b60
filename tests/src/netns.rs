//! Two network namespaces joined by a veth pair, torn down on drop, and a way to run code
//! inside one of them (a thread that `setns`es into it; the network namespace is per-thread).

use std::{
    net::Ipv4Addr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Context as _;
use nix::sched::{setns, CloneFlags};

use crate::run_ok;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `a` and `b` joined by `veth_a` (in `a`) and `veth_b` (in `b`), with `addr_a`/`addr_b` in
/// a /24 of their own, links and loopbacks up, and IPv6 off on the veths so that no
/// router or neighbour solicitation adds packets the tests do not expect.
pub struct NetnsPair {
    pub a: String,
    pub b: String,
    pub veth_a: String,
    pub veth_b: String,
    pub addr_a: Ipv4Addr,
    pub addr_b: Ipv4Addr,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run_ok(Command::new("ip").args(args)).map(|_| ())
}

fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    run_ok(Command::new("ip").args(["netns", "exec", ns]).args(args)).map(|_| ())
}

impl NetnsPair {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{}", std::process::id() % 100_000, n);
        // Interface names are limited to 15 bytes.
        let pair = Self {
            a: format!("gwt-{tag}-{id}-a"),
            b: format!("gwt-{tag}-{id}-b"),
            veth_a: format!("gva{id}"),
            veth_b: format!("gvb{id}"),
            // 198.18.0.0/15 is reserved for benchmarking; these addresses exist only
            // inside the two namespaces.
            addr_a: Ipv4Addr::new(198, 18, (n % 250) as u8 + 1, 1),
            addr_b: Ipv4Addr::new(198, 18, (n % 250) as u8 + 1, 2),
        };
        ip(&["netns", "add", &pair.a])?;
        ip(&["netns", "add", &pair.b])?;
        ip(&[
            "link",
            "add",
            &pair.veth_a,
            "netns",
            &pair.a,
            "type",
            "veth",
            "peer",
            "name",
            &pair.veth_b,
            "netns",
            &pair.b,
        ])?;
        for (ns, veth, addr) in [
            (&pair.a, &pair.veth_a, pair.addr_a),
            (&pair.b, &pair.veth_b, pair.addr_b),
        ] {
            in_ns(
                ns,
                &[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.{veth}.disable_ipv6=1"),
                ],
            )?;
            in_ns(
                ns,
                &["ip", "addr", "add", &format!("{addr}/24"), "dev", veth],
            )?;
            in_ns(ns, &["ip", "link", "set", veth, "up"])?;
            in_ns(ns, &["ip", "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// Runs `f` on a thread inside namespace `ns` and returns its result.
    pub fn run_in<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let name = ns.to_owned();
        std::thread::spawn(move || {
            enter(&name)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in namespace {ns} panicked"))?
    }

    /// The MAC address of `dev` in namespace `ns`.
    pub fn mac(ns: &str, dev: &str) -> anyhow::Result<[u8; 6]> {
        let out = run_ok(Command::new("ip").args(["-n", ns, "link", "show", "dev", dev]))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mac = text
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .with_context(|| format!("no MAC address for {dev} in {ns}: {text}"))?;
        let mut bytes = [0u8; 6];
        for (byte, hex) in bytes.iter_mut().zip(mac.split(':')) {
            *byte = u8::from_str_radix(hex, 16).with_context(|| format!("MAC {mac}"))?;
        }
        Ok(bytes)
    }

    /// `ip netns exec <ns>` followed by `program`, as a Command to add arguments to.
    pub fn command_in(ns: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]);
        cmd
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it the peer.
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
    }
}

/// Moves the calling thread into network namespace `ns` (the network namespace is
/// per-thread).
pub fn enter(ns: &str) -> anyhow::Result<()> {
    let path = format!("/var/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    setns(file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {path}"))
}
