//! The socket programs' maps: which listening socket `sk_lookup_steer` hands a steered
//! connection to, and which worker sockets `sk_reuseport_pick` chooses from.
//!
//! Every bind with sockets gets a slot (`0..SOCKET_SLOTS`, stable while the bind lives)
//! and a row of the `SOCKETS` SOCKMAP: `SOCKETS[slot * workers + worker]` holds each
//! worker's socket. The steering tries map (port, prefix) to the row's first socket (the
//! group's entry point for `sk_lookup`; the kernel then runs the group's `sk_reuseport`
//! selection), and `REUSEPORT_GROUPS[bind]` gives `sk_reuseport_pick` the row.
//! `REUSEPORT_LIVE` lists the workers that take new connections.
//!
//! Socket file descriptors come from the listeners as plain numbers; each is duplicated
//! and checked (bound to the bind's address, listening, `SO_REUSEPORT`) before it goes
//! into a map, so a descriptor closed and reused meanwhile is never registered.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, SockMap},
    programs::ProgramFd,
    Ebpf,
};
use gateway_common::{
    steer_v4, steer_v6, ListenerKey, MAP_REUSEPORT_GROUPS, MAP_REUSEPORT_LIVE, MAP_SOCKETS,
    MAP_SOCKET_STATS, MAP_STEER_V4, MAP_STEER_V6, REUSEPORT_WORKERS_MAX, SOCKET_PICKED,
    SOCKET_PICK_FALLBACK, SOCKET_REFUSED, SOCKET_SLOTS, SOCKET_STATS_SLOTS, SOCKET_STEERED,
    SOCKET_STEER_MISSED, STEER_PORT_BITS,
};
use tracing::debug;

use super::{chain, maps::take, EbpfError};

/// `SO_ATTACH_REUSEPORT_EBPF` (asm-generic/socket.h).
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;

/// A bind's listening sockets, as the listeners report them, and what to steer to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindSockets {
    pub bind: SocketAddr,
    /// The prefix `sk_lookup_steer` hands to this bind: its address range, or its own
    /// address when a range on the same port covers it (the longest prefix must win).
    pub steer: Option<(IpAddr, u8)>,
    /// `(worker, fd)` for each worker's socket.
    pub sockets: Vec<(usize, RawFd)>,
}

/// What the listeners bind, as the steering plan needs it: address and range length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedBind {
    pub addr: SocketAddr,
    pub prefix_len: Option<u8>,
    /// One address the host does not have, bound with `IP_FREEBIND`: steered as a
    /// full-length prefix, since nothing else brings it connections.
    pub nonlocal: bool,
}

/// Whether `ip` is in `net/len`.
pub(super) fn contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

/// The plan for the sockets the listeners hold (`(bind, worker, fd)`), with the ranges
/// and addresses of the serving table's binds. A range is steered whole; one address is
/// steered when the host does not have it, or when a range on the same port covers it.
/// A bind that is in the table but has no socket yet is left out (the next listener
/// change brings it); a bind with sockets that the table no longer has keeps its worker
/// group but is not steered.
pub fn plan(binds: &[PlannedBind], sockets: &[(SocketAddr, usize, RawFd)]) -> Vec<BindSockets> {
    let ranges: Vec<(u16, IpAddr, u8)> = binds
        .iter()
        .filter_map(|b| b.prefix_len.map(|len| (b.addr.port(), b.addr.ip(), len)))
        .collect();
    let steer_of = |addr: SocketAddr| -> Option<(IpAddr, u8)> {
        let bind = binds.iter().find(|b| b.addr == addr)?;
        if let Some(len) = bind.prefix_len {
            return Some((addr.ip(), len));
        }
        let ip = addr.ip();
        if ip.is_unspecified() {
            return None;
        }
        let covered = ranges
            .iter()
            .any(|&(port, net, len)| port == addr.port() && contains(net, len, ip));
        (bind.nonlocal || covered).then(|| (ip, if ip.is_ipv4() { 32 } else { 128 }))
    };
    let mut by_bind: BTreeMap<SocketAddr, Vec<(usize, RawFd)>> = BTreeMap::new();
    for &(bind, worker, fd) in sockets {
        by_bind.entry(bind).or_default().push((worker, fd));
    }
    by_bind
        .into_iter()
        .map(|(bind, mut sockets)| {
            sockets.sort_unstable();
            BindSockets {
                bind,
                steer: steer_of(bind),
                sockets,
            }
        })
        .collect()
}

/// A steering trie entry: family, port, prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SteerKey {
    port: u16,
    addr: IpAddr,
    len: u8,
}

/// One registered bind.
struct Registered {
    slot: u32,
    /// `(worker, socket cookie)` as registered; a change means new sockets.
    cookies: Vec<(usize, u64)>,
    steer: Option<SteerKey>,
}

/// Counters of the socket programs, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SocketCounters {
    pub steered: u64,
    pub steer_missed: u64,
    pub picked: u64,
    pub pick_fallback: u64,
    pub refused: u64,
    /// Prefixes in the steering tries.
    pub steered_prefixes: usize,
    /// Binds whose sockets are registered.
    pub groups: usize,
}

/// What one socket sync did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketSync {
    pub registered: usize,
    pub removed: usize,
    pub prefixes: usize,
    /// Binds left out: no free slot, or a socket that changed under us.
    pub skipped: usize,
}

/// Why a worker's drain state was not changed.
#[derive(Debug, thiserror::Error)]
pub enum DrainRefused {
    #[error("worker {worker} is the last one taking new connections")]
    LastWorker { worker: usize },
    #[error("draining needs {program}, which is not running")]
    Unavailable { program: &'static str },
    #[error(transparent)]
    Map(#[from] EbpfError),
}

pub struct SocketMaps {
    steer_v4: LpmTrie<MapData, [u8; 6], u32>,
    steer_v6: LpmTrie<MapData, [u8; 18], u32>,
    sockets: SockMap<MapData>,
    groups: HashMap<MapData, ListenerKey, u32>,
    live: Array<MapData, u32>,
    stats: PerCpuArray<MapData, u64>,
}

impl SocketMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, EbpfError> {
        Ok(Self {
            steer_v4: take(ebpf, MAP_STEER_V4)?,
            steer_v6: take(ebpf, MAP_STEER_V6)?,
            sockets: take(ebpf, MAP_SOCKETS)?,
            groups: take(ebpf, MAP_REUSEPORT_GROUPS)?,
            live: take(ebpf, MAP_REUSEPORT_LIVE)?,
            stats: take(ebpf, MAP_SOCKET_STATS)?,
        })
    }
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> EbpfError {
    move |e| EbpfError::Map {
        name,
        reason: chain(&e),
    }
}

/// The kernel's key for a bind (`ListenerKey` layout: what `sk_reuseport_pick` reads
/// from a socket of the group), the same key as the listener table's.
fn group_key(bind: SocketAddr) -> ListenerKey {
    super::listener::key(bind.ip(), bind.port())
}

/// A private duplicate of `fd`, if it is a listening `SO_REUSEPORT` TCP socket bound to
/// `bind`; with its cookie.
fn checked_dup(fd: RawFd, bind: SocketAddr) -> Option<(OwnedFd, u64)> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on any integer is sound: it fails with EBADF for a
    // closed descriptor; what the duplicate is gets checked below.
    #[allow(unsafe_code)]
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return None;
    }
    // SAFETY: `dup` is a new descriptor that nothing else owns.
    #[allow(unsafe_code)]
    let owned = unsafe { OwnedFd::from_raw_fd(dup) };
    let socket = socket2::SockRef::from(&owned);
    let local = socket.local_addr().ok()?.as_socket()?;
    let ok = local == bind
        && socket.is_listener().ok()?
        && socket.reuse_port().ok()?
        && socket.r#type().ok()? == socket2::Type::STREAM;
    if !ok {
        return None;
    }
    let cookie = socket.cookie().ok()?;
    Some((owned, cookie))
}

/// Attaches the `sk_reuseport` program to the group of `socket`.
fn attach_reuseport(program: &ProgramFd, socket: &OwnedFd) -> std::io::Result<()> {
    let prog_fd: libc::c_int = program.as_fd().as_raw_fd();
    // SAFETY: a valid socket descriptor and a pointer/length pair describing `prog_fd`,
    // which lives through the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_EBPF,
            (&raw const prog_fd).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The steering and worker-selection state userspace keeps in the maps.
pub struct Steering {
    maps: SocketMaps,
    /// Sockets per bind in `SOCKETS` (every bind is bound on every worker): the workers,
    /// at most `REUSEPORT_WORKERS_MAX` (beyond it `sk_reuseport_pick` is off and
    /// `sk_lookup_steer` needs only each row's first socket).
    workers: usize,
    /// `sk_lookup_steer` is attached: write the steering maps.
    pub steer_on: bool,
    /// `sk_reuseport_pick`, when it loaded: attached to every registered group.
    reuseport: Option<ProgramFd>,
    binds: BTreeMap<SocketAddr, Registered>,
    free: BTreeSet<u32>,
    /// Trie entries as written.
    prefixes: BTreeMap<SteerKey, u32>,
    /// `REUSEPORT_LIVE[1..]` as written, in order.
    live: Vec<u32>,
}

impl Steering {
    /// With `sk_reuseport_pick`, writes the list of live workers (all of them) before any
    /// group uses it.
    pub fn new(
        maps: SocketMaps,
        workers: usize,
        steer_on: bool,
        reuseport: Option<ProgramFd>,
    ) -> Result<Self, EbpfError> {
        let mut steering = Self {
            maps,
            workers: workers.clamp(1, REUSEPORT_WORKERS_MAX as usize),
            steer_on,
            reuseport,
            binds: BTreeMap::new(),
            free: (0..SOCKET_SLOTS).collect(),
            prefixes: BTreeMap::new(),
            live: Vec::new(),
        };
        if steering.reuseport.is_none() {
            return Ok(steering);
        }
        let err = map_err(MAP_REUSEPORT_LIVE);
        for worker in 0..steering.workers {
            let worker = u32::try_from(worker).unwrap_or(u32::MAX);
            let index = u32::try_from(steering.live.len() + 1).unwrap_or(u32::MAX);
            steering.maps.live.set(index, worker, 0).map_err(&err)?;
            steering.live.push(worker);
        }
        let count = u32::try_from(steering.live.len()).unwrap_or(u32::MAX);
        steering.maps.live.set(0, count, 0).map_err(&err)?;
        Ok(steering)
    }

    pub fn reuseport_on(&self) -> bool {
        self.reuseport.is_some()
    }

    /// Brings the maps to `plan`: sockets and groups of new or rebound binds first, then
    /// steering entries (adds and changes before removals), then what is gone.
    pub fn sync(&mut self, plan: &[BindSockets]) -> Result<SocketSync, EbpfError> {
        if !self.steer_on && self.reuseport.is_none() {
            return Ok(SocketSync::default());
        }
        let mut report = SocketSync::default();
        let mut first_err = None;
        let mut present = BTreeSet::new();
        for bind in plan {
            present.insert(bind.bind);
            match self.register(bind) {
                Ok(true) => report.registered += 1,
                Ok(false) => {}
                Err(Skip::Skipped) => report.skipped += 1,
                Err(Skip::Failed(err)) => {
                    report.skipped += 1;
                    first_err.get_or_insert(err);
                }
            }
        }
        // Steering: every registered bind's prefix.
        let wanted: BTreeMap<SteerKey, u32> = if self.steer_on {
            self.binds
                .iter()
                .filter(|(addr, _)| present.contains(*addr))
                .filter_map(|(_, r)| r.steer.map(|k| (k, self.base(r.slot))))
                .collect()
        } else {
            BTreeMap::new()
        };
        for (key, slot) in &wanted {
            if self.prefixes.get(key) == Some(slot) {
                continue;
            }
            match self.write_prefix(key, *slot) {
                Ok(()) => {
                    self.prefixes.insert(*key, *slot);
                }
                Err(err) => {
                    first_err.get_or_insert(err);
                }
            }
        }
        let stale: Vec<SteerKey> = self
            .prefixes
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in stale {
            match self.remove_prefix(&key) {
                Ok(()) => {
                    self.prefixes.remove(&key);
                }
                Err(err) => {
                    first_err.get_or_insert(err);
                }
            }
        }
        report.prefixes = self.prefixes.len();
        // Binds whose sockets are gone: nothing steers to their slot any more.
        let gone: Vec<SocketAddr> = self
            .binds
            .keys()
            .filter(|b| !present.contains(b))
            .copied()
            .collect();
        for bind in gone {
            if let Some(registered) = self.binds.remove(&bind) {
                self.unregister(bind, &registered);
                self.free.insert(registered.slot);
                report.removed += 1;
            }
        }
        match first_err {
            Some(err) => Err(err),
            None => Ok(report),
        }
    }

    /// Registers `bind` when it is new or its sockets changed; `Ok(true)` when it wrote.
    fn register(&mut self, bind: &BindSockets) -> Result<bool, Skip> {
        let steer = bind.steer.map(|(addr, len)| SteerKey {
            port: bind.bind.port(),
            addr,
            len,
        });
        let mut checked = Vec::with_capacity(bind.sockets.len());
        for &(worker, fd) in &bind.sockets {
            match checked_dup(fd, bind.bind) {
                Some((owned, cookie)) => checked.push((worker, owned, cookie)),
                None => {
                    debug!(bind = %bind.bind, worker, "a listening socket changed while it was registered; next time");
                    return Err(Skip::Skipped);
                }
            }
        }
        let cookies: Vec<(usize, u64)> = checked.iter().map(|(w, _, c)| (*w, *c)).collect();
        if let Some(registered) = self.binds.get_mut(&bind.bind) {
            if registered.cookies == cookies {
                registered.steer = steer;
                return Ok(false);
            }
        }
        let slot = match self.binds.get(&bind.bind) {
            Some(registered) => registered.slot,
            None => self.free.pop_first().ok_or_else(|| {
                Skip::Failed(EbpfError::Map {
                    name: MAP_SOCKETS,
                    reason: format!(
                        "all {SOCKET_SLOTS} socket slots are in use: {} is not steered",
                        bind.bind
                    ),
                })
            })?,
        };
        let result = self.write_sockets(bind.bind, slot, &checked);
        // Registered even when a write failed, so that the slot is not lost; a later
        // change of the sockets rewrites it.
        self.binds.insert(
            bind.bind,
            Registered {
                slot,
                cookies,
                steer,
            },
        );
        result.map(|()| true).map_err(Skip::Failed)
    }

    /// The index in `SOCKETS` of the first socket of `slot`'s row.
    fn base(&self, slot: u32) -> u32 {
        slot.saturating_mul(u32::try_from(self.workers).unwrap_or(u32::MAX))
    }

    fn write_sockets(
        &mut self,
        bind: SocketAddr,
        slot: u32,
        sockets: &[(usize, OwnedFd, u64)],
    ) -> Result<(), EbpfError> {
        let base = self.base(slot);
        for (worker, socket, _) in sockets {
            if *worker >= self.workers {
                continue;
            }
            let index = base + u32::try_from(*worker).unwrap_or(0);
            self.maps
                .sockets
                .set(index, socket, 0)
                .map_err(map_err(MAP_SOCKETS))?;
        }
        if let Some(program) = &self.reuseport {
            self.maps
                .groups
                .insert(group_key(bind), base, 0)
                .map_err(map_err(MAP_REUSEPORT_GROUPS))?;
            if let Some((_, socket, _)) = sockets.first() {
                attach_reuseport(program, socket).map_err(|e| EbpfError::Attach {
                    program: gateway_common::PROG_SK_REUSEPORT_PICK,
                    iface: format!("the SO_REUSEPORT group of {bind}"),
                    reason: e.to_string(),
                })?;
            }
        }
        Ok(())
    }

    /// Removes what points at a bind that is gone. Its sockets, once closed, leave the
    /// SOCKMAP by themselves; clearing them here covers sockets not closed yet.
    fn unregister(&mut self, bind: SocketAddr, registered: &Registered) {
        let _ = self.maps.groups.remove(&group_key(bind));
        let base = self.base(registered.slot);
        for worker in 0..self.workers {
            let index = base + u32::try_from(worker).unwrap_or(0);
            let _ = self.maps.sockets.clear_index(&index);
        }
    }

    fn write_prefix(&mut self, key: &SteerKey, index: u32) -> Result<(), EbpfError> {
        match key.addr {
            IpAddr::V4(v4) => self
                .maps
                .steer_v4
                .insert(
                    &Key::new(
                        STEER_PORT_BITS + u32::from(key.len),
                        steer_v4(key.port, v4.octets()),
                    ),
                    index,
                    0,
                )
                .map_err(map_err(MAP_STEER_V4)),
            IpAddr::V6(v6) => self
                .maps
                .steer_v6
                .insert(
                    &Key::new(
                        STEER_PORT_BITS + u32::from(key.len),
                        steer_v6(key.port, v6.octets()),
                    ),
                    index,
                    0,
                )
                .map_err(map_err(MAP_STEER_V6)),
        }
    }

    fn remove_prefix(&mut self, key: &SteerKey) -> Result<(), EbpfError> {
        match key.addr {
            IpAddr::V4(v4) => self
                .maps
                .steer_v4
                .remove(&Key::new(
                    STEER_PORT_BITS + u32::from(key.len),
                    steer_v4(key.port, v4.octets()),
                ))
                .map_err(map_err(MAP_STEER_V4)),
            IpAddr::V6(v6) => self
                .maps
                .steer_v6
                .remove(&Key::new(
                    STEER_PORT_BITS + u32::from(key.len),
                    steer_v6(key.port, v6.octets()),
                ))
                .map_err(map_err(MAP_STEER_V6)),
        }
    }

    /// The workers that are draining (not in the live list), in order.
    pub fn draining(&self) -> Vec<usize> {
        (0..self.workers)
            .filter(|w| !self.live.contains(&u32::try_from(*w).unwrap_or(u32::MAX)))
            .collect()
    }

    /// Marks `worker` draining (out of `REUSEPORT_LIVE`) or not. Unless `allow_none`, the
    /// last live worker cannot drain. Every intermediate state of the list holds only
    /// workers that take connections: a drained worker's position is overwritten with the
    /// last entry before the count shrinks; an added worker is written past the end before
    /// the count grows.
    pub fn set_draining(
        &mut self,
        worker: usize,
        draining: bool,
        allow_none: bool,
    ) -> Result<bool, DrainRefused> {
        if self.reuseport.is_none() {
            return Err(DrainRefused::Unavailable {
                program: gateway_common::PROG_SK_REUSEPORT_PICK,
            });
        }
        let id = u32::try_from(worker).unwrap_or(u32::MAX);
        let position = self.live.iter().position(|w| *w == id);
        let err = map_err(MAP_REUSEPORT_LIVE);
        match (draining, position) {
            (true, Some(position)) => {
                if self.live.len() == 1 && !allow_none {
                    return Err(DrainRefused::LastWorker { worker });
                }
                let last = self.live.len() - 1;
                if position != last {
                    let moved = self.live[last];
                    let index = u32::try_from(position + 1).unwrap_or(u32::MAX);
                    self.maps.live.set(index, moved, 0).map_err(&err)?;
                }
                self.live.swap_remove(position);
                let count = u32::try_from(self.live.len()).unwrap_or(u32::MAX);
                self.maps.live.set(0, count, 0).map_err(&err)?;
                Ok(true)
            }
            (false, None) => {
                let index = u32::try_from(self.live.len() + 1).unwrap_or(u32::MAX);
                self.maps.live.set(index, id, 0).map_err(&err)?;
                self.live.push(id);
                let count = u32::try_from(self.live.len()).unwrap_or(u32::MAX);
                self.maps.live.set(0, count, 0).map_err(&err)?;
                Ok(true)
            }
            // Already as asked.
            _ => Ok(false),
        }
    }

    /// `SOCKET_STATS` summed over CPUs, and the table sizes.
    pub fn counters(&self) -> Result<SocketCounters, EbpfError> {
        let sum = |slot: u32| -> Result<u64, EbpfError> {
            debug_assert!(slot < SOCKET_STATS_SLOTS);
            let per_cpu = self
                .maps
                .stats
                .get(&slot, 0)
                .map_err(map_err(MAP_SOCKET_STATS))?;
            Ok(per_cpu.iter().sum())
        };
        Ok(SocketCounters {
            steered: sum(SOCKET_STEERED)?,
            steer_missed: sum(SOCKET_STEER_MISSED)?,
            picked: sum(SOCKET_PICKED)?,
            pick_fallback: sum(SOCKET_PICK_FALLBACK)?,
            refused: sum(SOCKET_REFUSED)?,
            steered_prefixes: self.prefixes.len(),
            groups: self.binds.len(),
        })
    }
}

enum Skip {
    /// Left for the next sync (no slot, or a socket changed meanwhile).
    Skipped,
    Failed(EbpfError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(addr: &str, prefix_len: Option<u8>) -> PlannedBind {
        PlannedBind {
            addr: addr.parse().expect("test address"),
            prefix_len,
            nonlocal: false,
        }
    }

    fn sockets(binds: &[&str]) -> Vec<(SocketAddr, usize, RawFd)> {
        binds
            .iter()
            .enumerate()
            .flat_map(|(i, b)| {
                let addr: SocketAddr = b.parse().expect("test address");
                (0..2).map(move |w| (addr, w, (10 + i * 2 + w) as RawFd))
            })
            .collect()
    }

    #[test]
    fn ranges_are_steered_and_so_are_single_addresses_inside_a_range_on_the_same_port() {
        let binds = [
            bind("192.0.2.0:80", Some(24)),
            bind("192.0.2.9:80", None),
            bind("192.0.2.9:81", None),
            bind("198.51.100.1:80", None),
            bind("0.0.0.0:80", None),
            bind("[2001:db8::]:443", Some(64)),
        ];
        let socks = sockets(&[
            "192.0.2.0:80",
            "192.0.2.9:80",
            "192.0.2.9:81",
            "198.51.100.1:80",
            "0.0.0.0:80",
            "[2001:db8::]:443",
        ]);
        let plan = plan(&binds, &socks);
        let steer: Vec<(String, Option<(IpAddr, u8)>)> =
            plan.iter().map(|b| (b.bind.to_string(), b.steer)).collect();
        let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
        assert_eq!(
            steer,
            vec![
                ("0.0.0.0:80".into(), None),
                ("192.0.2.0:80".into(), Some((ip("192.0.2.0"), 24))),
                ("192.0.2.9:80".into(), Some((ip("192.0.2.9"), 32))),
                ("192.0.2.9:81".into(), None),
                ("198.51.100.1:80".into(), None),
                ("[2001:db8::]:443".into(), Some((ip("2001:db8::"), 64))),
            ]
        );
        assert!(plan.iter().all(|b| b.sockets.len() == 2));
    }

    #[test]
    fn an_address_the_host_does_not_have_is_steered_as_a_full_length_prefix() {
        let binds = [
            PlannedBind {
                nonlocal: true,
                ..bind("198.51.100.7:80", None)
            },
            PlannedBind {
                nonlocal: true,
                ..bind("[2001:db8::7]:80", None)
            },
            bind("198.51.100.8:80", None),
        ];
        let plan = plan(
            &binds,
            &sockets(&["198.51.100.7:80", "[2001:db8::7]:80", "198.51.100.8:80"]),
        );
        let steer: Vec<(String, Option<(IpAddr, u8)>)> =
            plan.iter().map(|b| (b.bind.to_string(), b.steer)).collect();
        let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
        assert_eq!(
            steer,
            vec![
                ("198.51.100.7:80".into(), Some((ip("198.51.100.7"), 32))),
                ("198.51.100.8:80".into(), None),
                ("[2001:db8::7]:80".into(), Some((ip("2001:db8::7"), 128))),
            ]
        );
    }

    #[test]
    fn sockets_of_a_bind_gone_from_the_table_keep_their_group_but_are_not_steered() {
        let plan = plan(&[], &sockets(&["192.0.2.0:80"]));
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].steer, None);
    }

    #[test]
    fn a_bind_without_sockets_yet_is_left_for_later() {
        let plan = plan(&[bind("192.0.2.0:80", Some(24))], &[]);
        assert!(plan.is_empty());
    }

    #[test]
    fn range_membership_respects_the_prefix_length() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
        assert!(contains(ip("10.0.0.0"), 8, ip("10.255.1.2")));
        assert!(!contains(ip("10.0.0.0"), 8, ip("11.0.0.1")));
        assert!(contains(ip("10.1.2.3"), 32, ip("10.1.2.3")));
        assert!(contains(ip("2001:db8::"), 32, ip("2001:db8:ffff::1")));
        assert!(!contains(ip("2001:db8::"), 48, ip("2001:db8:1::1")));
        assert!(!contains(ip("10.0.0.0"), 8, ip("::ffff:10.0.0.1")));
    }

    #[test]
    fn a_descriptor_that_is_not_the_binds_listening_socket_is_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Not SO_REUSEPORT: refused.
        assert!(checked_dup(listener.as_raw_fd(), addr).is_none());
        let reuse = crate::listen::bind_reuseport("127.0.0.1:0".parse().expect("addr"))
            .expect("bind reuseport");
        let reuse_addr = reuse.local_addr().expect("addr");
        assert!(checked_dup(reuse.as_raw_fd(), reuse_addr).is_some());
        // Another address: refused.
        assert!(checked_dup(reuse.as_raw_fd(), addr).is_none());
        // A closed descriptor: refused.
        let fd = reuse.as_raw_fd();
        drop(reuse);
        assert!(checked_dup(fd, reuse_addr).is_none());
    }
}
