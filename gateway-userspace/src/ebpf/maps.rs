//! Typed handles on every map userspace reads or writes, taken out of the loaded object.

use std::net::IpAddr;

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuValues},
    Ebpf, Pod,
};
use gateway_common::{
    steer_v4, steer_v6, AddrKey, DataplaneConfig, FlowKey, FlowValue, ListenerKey, ListenerStats,
    ListenerValue, Stats, MAP_ACL_V4, MAP_ACL_V6, MAP_CONFIG, MAP_DROPS, MAP_FLOWS,
    MAP_GATEWAY_ADDRS, MAP_GATEWAY_RANGES_V4, MAP_GATEWAY_RANGES_V6, MAP_LISTENERS,
    MAP_LISTENER_PORTS, MAP_LISTENER_RANGES_V4, MAP_LISTENER_RANGES_V6, MAP_LISTENER_STATS,
    MAP_STATS, STEER_PORT_BITS,
};

use super::{chain, listener::Slot, EbpfError};

pub struct Maps {
    pub flows: HashMap<MapData, FlowKey, FlowValue>,
    pub stats: PerCpuArray<MapData, Stats>,
    pub drops: PerCpuArray<MapData, u64>,
    pub listeners: HashMap<MapData, ListenerKey, ListenerValue>,
    pub listener_stats: PerCpuArray<MapData, ListenerStats>,
    pub listener_ports: Array<MapData, u64>,
    pub gateway_addrs: HashMap<MapData, AddrKey, u32>,
    pub listener_ranges_v4: LpmTrie<MapData, [u8; 6], ListenerValue>,
    pub listener_ranges_v6: LpmTrie<MapData, [u8; 18], ListenerValue>,
    pub gateway_ranges_v4: LpmTrie<MapData, [u8; 4], u32>,
    pub gateway_ranges_v6: LpmTrie<MapData, [u8; 16], u32>,
    pub acl_v4: LpmTrie<MapData, [u8; 4], u32>,
    pub acl_v6: LpmTrie<MapData, [u8; 16], u32>,
    pub config: Array<MapData, DataplaneConfig>,
}

/// Takes map `name` out of `ebpf` as the typed map `T`.
pub(super) fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(EbpfError::MissingMap { name })?;
    T::try_from(map).map_err(|e| EbpfError::Map {
        name,
        reason: chain(&e),
    })
}

/// Adds (`present`) or removes `addr/len` in a trie of prefixes.
fn set_in<K: Pod>(
    trie: &mut LpmTrie<MapData, K, u32>,
    addr: K,
    len: u8,
    present: bool,
) -> Result<(), MapError> {
    let key = Key::new(u32::from(len), addr);
    if present {
        trie.insert(&key, 1, 0)
    } else {
        trie.remove(&key)
    }
}

/// Where the kernel holds a listener: `LISTENERS` under its own key, or the range trie
/// of its family under its port, then its range.
enum ListenerEntry {
    Exact,
    RangeV4(Key<[u8; 6]>),
    RangeV6(Key<[u8; 18]>),
}

impl ListenerEntry {
    fn of(key: &ListenerKey, slot: &Slot) -> Self {
        match (slot.wanted.prefix_len, slot.wanted.addr.ip()) {
            (None, _) => Self::Exact,
            (Some(len), IpAddr::V4(ip)) => Self::RangeV4(Key::new(
                STEER_PORT_BITS + u32::from(len),
                steer_v4(key.port, ip.octets()),
            )),
            (Some(len), IpAddr::V6(ip)) => Self::RangeV6(Key::new(
                STEER_PORT_BITS + u32::from(len),
                steer_v6(key.port, ip.octets()),
            )),
        }
    }
}

impl Maps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, EbpfError> {
        Ok(Self {
            flows: take(ebpf, MAP_FLOWS)?,
            stats: take(ebpf, MAP_STATS)?,
            drops: take(ebpf, MAP_DROPS)?,
            listeners: take(ebpf, MAP_LISTENERS)?,
            listener_stats: take(ebpf, MAP_LISTENER_STATS)?,
            listener_ports: take(ebpf, MAP_LISTENER_PORTS)?,
            gateway_addrs: take(ebpf, MAP_GATEWAY_ADDRS)?,
            listener_ranges_v4: take(ebpf, MAP_LISTENER_RANGES_V4)?,
            listener_ranges_v6: take(ebpf, MAP_LISTENER_RANGES_V6)?,
            gateway_ranges_v4: take(ebpf, MAP_GATEWAY_RANGES_V4)?,
            gateway_ranges_v6: take(ebpf, MAP_GATEWAY_RANGES_V6)?,
            acl_v4: take(ebpf, MAP_ACL_V4)?,
            acl_v6: take(ebpf, MAP_ACL_V6)?,
            config: take(ebpf, MAP_CONFIG)?,
        })
    }

    /// `STATS[slot]` summed over CPUs.
    pub fn stats(&self, slot: u32) -> Result<Stats, EbpfError> {
        let per_cpu = self.stats.get(&slot, 0).map_err(|e| EbpfError::Map {
            name: MAP_STATS,
            reason: chain(&e),
        })?;
        Ok(per_cpu.iter().fold(Stats::default(), |acc, s| Stats {
            packets: acc.packets + s.packets,
            bytes: acc.bytes + s.bytes,
            parse_failures: acc.parse_failures + s.parse_failures,
            non_ip: acc.non_ip + s.non_ip,
        }))
    }

    /// `DROPS[reason]` summed over CPUs.
    pub fn drops(&self, reason: u32) -> Result<u64, EbpfError> {
        let per_cpu = self.drops.get(&reason, 0).map_err(|e| EbpfError::Map {
            name: MAP_DROPS,
            reason: chain(&e),
        })?;
        Ok(per_cpu.iter().sum())
    }

    /// `LISTENER_STATS[id]` summed over CPUs.
    pub fn listener_stats(&self, id: u32) -> Result<ListenerStats, EbpfError> {
        let per_cpu = self
            .listener_stats
            .get(&id, 0)
            .map_err(|e| EbpfError::Map {
                name: MAP_LISTENER_STATS,
                reason: chain(&e),
            })?;
        Ok(per_cpu
            .iter()
            .fold(ListenerStats::default(), |acc, s| ListenerStats {
                rx_packets: acc.rx_packets + s.rx_packets,
                rx_bytes: acc.rx_bytes + s.rx_bytes,
                tx_packets: acc.tx_packets + s.tx_packets,
                tx_bytes: acc.tx_bytes + s.tx_bytes,
            }))
    }

    /// Zeroes `LISTENER_STATS[id]` on every CPU (before a new listener takes the id).
    pub fn zero_listener_stats(&mut self, id: u32) -> Result<(), EbpfError> {
        let err = |reason: String| EbpfError::Map {
            name: MAP_LISTENER_STATS,
            reason,
        };
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| err(format!("{what}: {e}")))?;
        let zeros = PerCpuValues::try_from(vec![ListenerStats::default(); cpus])
            .map_err(|e| err(e.to_string()))?;
        self.listener_stats
            .set(id, zeros, 0)
            .map_err(|e| err(chain(&e)))
    }

    /// Writes the words of the port bitmap that differ from `current` (which is updated).
    pub fn set_ports(&mut self, current: &mut [u64], wanted: &[u64]) -> Result<(), EbpfError> {
        for (index, (have, want)) in current.iter_mut().zip(wanted).enumerate() {
            if *have != *want {
                self.listener_ports
                    .set(index as u32, *want, 0)
                    .map_err(|e| EbpfError::Map {
                        name: MAP_LISTENER_PORTS,
                        reason: chain(&e),
                    })?;
                *have = *want;
            }
        }
        Ok(())
    }

    /// Writes `slot` under `key`: in `LISTENERS`, or, for a listener that serves an
    /// address range, in the range trie of its family (port, then the range).
    pub fn insert_listener(&mut self, key: &ListenerKey, slot: &Slot) -> Result<(), EbpfError> {
        let value = slot.value();
        let (name, result) = match ListenerEntry::of(key, slot) {
            ListenerEntry::Exact => (MAP_LISTENERS, self.listeners.insert(key, value, 0)),
            ListenerEntry::RangeV4(range) => (
                MAP_LISTENER_RANGES_V4,
                self.listener_ranges_v4.insert(&range, value, 0),
            ),
            ListenerEntry::RangeV6(range) => (
                MAP_LISTENER_RANGES_V6,
                self.listener_ranges_v6.insert(&range, value, 0),
            ),
        };
        result.map_err(|e| EbpfError::Map {
            name,
            reason: chain(&e),
        })
    }

    /// Removes the entry [`Maps::insert_listener`] wrote for `slot`.
    pub fn remove_listener(&mut self, key: &ListenerKey, slot: &Slot) -> Result<(), EbpfError> {
        let (name, result) = match ListenerEntry::of(key, slot) {
            ListenerEntry::Exact => (MAP_LISTENERS, self.listeners.remove(key)),
            ListenerEntry::RangeV4(range) => (
                MAP_LISTENER_RANGES_V4,
                self.listener_ranges_v4.remove(&range),
            ),
            ListenerEntry::RangeV6(range) => (
                MAP_LISTENER_RANGES_V6,
                self.listener_ranges_v6.remove(&range),
            ),
        };
        result.map_err(|e| EbpfError::Map {
            name,
            reason: chain(&e),
        })
    }

    /// Adds (`present`) or removes one of the gateway's address ranges.
    pub fn set_gateway_range(
        &mut self,
        (addr, len): (IpAddr, u8),
        present: bool,
    ) -> Result<(), EbpfError> {
        let (name, result) = match addr {
            IpAddr::V4(ip) => (
                MAP_GATEWAY_RANGES_V4,
                set_in(&mut self.gateway_ranges_v4, ip.octets(), len, present),
            ),
            IpAddr::V6(ip) => (
                MAP_GATEWAY_RANGES_V6,
                set_in(&mut self.gateway_ranges_v6, ip.octets(), len, present),
            ),
        };
        result.map_err(|e| EbpfError::Map {
            name,
            reason: chain(&e),
        })
    }

    pub fn set_config(&mut self, config: &DataplaneConfig) -> Result<(), EbpfError> {
        self.config.set(0, config, 0).map_err(|e| EbpfError::Map {
            name: MAP_CONFIG,
            reason: chain(&e),
        })
    }
}
