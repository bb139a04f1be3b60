//! The listener table as the kernel sees it (`LISTENERS`, and `LISTENER_RANGES_V4/V6` for
//! listeners that serve a Gateway address range), computed from the compiled table's eBPF
//! plan, and the stable ids (slots of `LISTENER_STATS`) given to listeners.
//!
//! An id stays with a listener (address, port, protocol) for as long as the listener is in
//! the configuration, so its counters survive reloads. Freed ids are reused last (ids are
//! handed out round-robin) and zeroed before reuse.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use gateway_common::{
    ListenerKey, ListenerValue, FAMILY_IPV4, FAMILY_IPV6, IPPROTO_TCP, LISTENERS_MAX_ENTRIES,
    LISTENER_PORT_WORDS, LISTENER_PROTOCOL_SHIFT, LISTENER_PROTO_HTTP, LISTENER_PROTO_HTTPS,
    LISTENER_PROTO_TLS_PASSTHROUGH, LISTENER_PROTO_TLS_TERMINATE, LISTENER_TLS,
};
use gateway_config::{EbpfListenerEntry, ListenerProtocol, RouteTable};

/// One entry of the compiled table's eBPF plan with the range its bind serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    pub entry: EbpfListenerEntry,
    /// `Some(len)`: the bind serves the address range `entry.addr/len`.
    pub prefix_len: Option<u8>,
}

/// The eBPF plan of `table`, each entry with its bind's range.
pub fn plan(table: &RouteTable) -> Vec<Planned> {
    table
        .ebpf_plan()
        .iter()
        .map(|entry| Planned {
            entry: *entry,
            prefix_len: table
                .binds()
                .get(entry.bind_index as usize)
                .and_then(|bind| bind.prefix_len),
        })
        .collect()
}

/// What the kernel should hold for one listener, without its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub flags: u32,
    pub addr: SocketAddr,
    pub protocol: ListenerProtocol,
    /// `Some(len)`: the listener serves `addr/len`; its entry is in the range trie of its
    /// family, not in `LISTENERS`.
    pub prefix_len: Option<u8>,
}

/// One listener in `LISTENERS`, with its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub id: u32,
    pub wanted: Wanted,
}

impl Slot {
    pub fn value(&self) -> ListenerValue {
        ListenerValue {
            id: self.id,
            flags: self.wanted.flags,
        }
    }

    /// `addr:port` as `/metrics` and `/flows` name the listener; a range is
    /// `192.0.2.0/24:80` or `[2001:db8::/64]:443`.
    pub fn label(&self) -> String {
        let addr = self.wanted.addr;
        match (self.wanted.prefix_len, addr.ip()) {
            (None, _) => addr.to_string(),
            (Some(len), IpAddr::V4(ip)) => format!("{ip}/{len}:{}", addr.port()),
            (Some(len), IpAddr::V6(ip)) => format!("[{ip}/{len}]:{}", addr.port()),
        }
    }

    pub fn protocol_name(&self) -> &'static str {
        protocol_name(self.wanted.protocol)
    }
}

pub fn protocol_name(protocol: ListenerProtocol) -> &'static str {
    match protocol {
        ListenerProtocol::Http => "http",
        ListenerProtocol::Https => "https",
        ListenerProtocol::TlsTerminate => "tls-terminate",
        ListenerProtocol::TlsPassthrough => "tls-passthrough",
    }
}

/// The kernel key of an address and TCP port (IPv4 in the first 4 bytes).
pub fn key(addr: IpAddr, port: u16) -> ListenerKey {
    let (family, addr) = family_and_addr(addr);
    ListenerKey {
        port,
        protocol: IPPROTO_TCP,
        family,
        addr,
    }
}

/// An address as the kernel maps hold it: family, and 16 bytes (IPv4 in the first 4).
pub fn family_and_addr(addr: IpAddr) -> (u8, [u8; 16]) {
    match addr {
        IpAddr::V4(v4) => {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            (FAMILY_IPV4, bytes)
        }
        IpAddr::V6(v6) => (FAMILY_IPV6, v6.octets()),
    }
}

/// The listeners wanted for `plan`, keyed by address (a range's first address), port and
/// protocol: the identity of a listener across reloads.
pub fn desired(plan: &[Planned]) -> BTreeMap<ListenerKey, Wanted> {
    plan.iter()
        .map(|&Planned { entry, prefix_len }| {
            let protocol = match entry.protocol {
                ListenerProtocol::Http => LISTENER_PROTO_HTTP,
                ListenerProtocol::Https => LISTENER_PROTO_HTTPS,
                ListenerProtocol::TlsTerminate => LISTENER_PROTO_TLS_TERMINATE,
                ListenerProtocol::TlsPassthrough => LISTENER_PROTO_TLS_PASSTHROUGH,
            };
            let flags =
                (protocol << LISTENER_PROTOCOL_SHIFT) | if entry.tls { LISTENER_TLS } else { 0 };
            (
                key(entry.addr, entry.port),
                Wanted {
                    flags,
                    addr: SocketAddr::new(entry.addr, entry.port),
                    protocol: entry.protocol,
                    prefix_len,
                },
            )
        })
        .collect()
}

/// The `LISTENER_PORTS` bitmap of `wanted`: bit `port % 64` of word `port / 64`.
pub fn port_bitmap<'a>(keys: impl IntoIterator<Item = &'a ListenerKey>) -> Vec<u64> {
    let mut words = vec![0u64; LISTENER_PORT_WORDS as usize];
    for key in keys {
        words[usize::from(key.port >> 6)] |= 1 << (key.port & 63);
    }
    words
}

/// What to change in `LISTENERS`: upserts first (new ids are zeroed before), then removes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Entries to write; `true` when the id is newly taken (its counters must be zeroed).
    pub upserts: Vec<(ListenerKey, Slot, bool)>,
    pub removes: Vec<ListenerKey>,
    /// Listeners left out: no free id.
    pub overflow: usize,
}

/// The listeners in the kernel map, and which ids are taken.
#[derive(Debug)]
pub struct Slots {
    current: BTreeMap<ListenerKey, Slot>,
    taken: Vec<bool>,
    next: u32,
}

impl Default for Slots {
    fn default() -> Self {
        Self::new(LISTENERS_MAX_ENTRIES)
    }
}

impl Slots {
    pub fn new(capacity: u32) -> Self {
        Self {
            current: BTreeMap::new(),
            taken: vec![false; capacity as usize],
            next: 0,
        }
    }

    /// The diff from the current table to `desired`; ids for new listeners are reserved.
    pub fn diff(&mut self, desired: &BTreeMap<ListenerKey, Wanted>) -> Diff {
        let mut diff = Diff::default();
        for (key, wanted) in desired {
            match self.current.get(key) {
                Some(slot) if slot.wanted == *wanted => {}
                Some(slot) => diff.upserts.push((
                    *key,
                    Slot {
                        id: slot.id,
                        wanted: *wanted,
                    },
                    false,
                )),
                None => match self.allocate() {
                    Some(id) => diff.upserts.push((
                        *key,
                        Slot {
                            id,
                            wanted: *wanted,
                        },
                        true,
                    )),
                    None => diff.overflow += 1,
                },
            }
        }
        diff.removes = self
            .current
            .keys()
            .filter(|key| !desired.contains_key(key))
            .copied()
            .collect();
        diff
    }

    fn allocate(&mut self) -> Option<u32> {
        let capacity = self.taken.len() as u32;
        for step in 0..capacity {
            let id = (self.next + step) % capacity;
            if !self.taken[id as usize] {
                self.taken[id as usize] = true;
                self.next = (id + 1) % capacity;
                return Some(id);
            }
        }
        None
    }

    /// The upsert of `key` reached the kernel.
    pub fn upserted(&mut self, key: ListenerKey, slot: Slot) {
        self.current.insert(key, slot);
    }

    /// The upsert of a new listener failed: give its id back.
    pub fn release(&mut self, id: u32) {
        if let Some(taken) = self.taken.get_mut(id as usize) {
            *taken = false;
        }
    }

    /// The remove of `key` reached the kernel.
    pub fn removed(&mut self, key: &ListenerKey) {
        if let Some(slot) = self.current.remove(key) {
            self.release(slot.id);
        }
    }

    /// The listener in the kernel under `key`.
    pub fn get(&self, key: &ListenerKey) -> Option<&Slot> {
        self.current.get(key)
    }

    /// The listener holding `id`.
    pub fn by_id(&self, id: u32) -> Option<&Slot> {
        self.current.values().find(|slot| slot.id == id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ListenerKey, &Slot)> {
        self.current.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(addr: &str, port: u16, protocol: ListenerProtocol) -> Planned {
        Planned {
            entry: EbpfListenerEntry {
                addr: addr.parse().expect("test address"),
                port,
                protocol,
                tls: protocol.is_tls(),
                bind_index: 0,
            },
            prefix_len: None,
        }
    }

    #[test]
    fn a_range_listener_is_named_by_its_range_and_changes_in_place_when_the_range_does() {
        let range = |len| Planned {
            prefix_len: Some(len),
            ..entry("192.0.2.0", 80, ListenerProtocol::Http)
        };
        let mut slots = Slots::new(4);
        let diff = slots.diff(&desired(&[range(24)]));
        apply(&mut slots, &diff);
        let (_, slot) = slots.iter().next().expect("one listener");
        assert_eq!(slot.label(), "192.0.2.0/24:80");
        let diff = slots.diff(&desired(&[range(25)]));
        assert_eq!(diff.upserts.len(), 1);
        assert!(!diff.upserts[0].2, "same listener, same id");
        assert_eq!(diff.upserts[0].1.wanted.prefix_len, Some(25));
        assert!(diff.removes.is_empty());
        let v6 = Planned {
            prefix_len: Some(64),
            ..entry("2001:db8::", 443, ListenerProtocol::Https)
        };
        let wanted = desired(&[v6]);
        let slot = Slot {
            id: 0,
            wanted: *wanted.values().next().expect("one"),
        };
        assert_eq!(slot.label(), "[2001:db8::/64]:443");
    }

    /// Applies a diff as if every kernel operation succeeded.
    fn apply(slots: &mut Slots, diff: &Diff) {
        for (key, slot, _) in &diff.upserts {
            slots.upserted(*key, *slot);
        }
        for key in &diff.removes {
            slots.removed(key);
        }
    }

    #[test]
    fn keys_carry_family_padded_address_and_tcp() {
        let plan = [
            entry("198.18.0.1", 8080, ListenerProtocol::Http),
            entry("::", 8443, ListenerProtocol::Https),
        ];
        let wanted = desired(&plan);
        let keys: Vec<_> = wanted.keys().copied().collect();
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[198, 18, 0, 1]);
        assert!(keys.contains(&ListenerKey {
            addr: v4,
            port: 8080,
            protocol: IPPROTO_TCP,
            family: FAMILY_IPV4
        }));
        assert!(keys.contains(&ListenerKey {
            addr: [0; 16],
            port: 8443,
            protocol: IPPROTO_TCP,
            family: FAMILY_IPV6
        }));
        let https = wanted
            .values()
            .find(|w| w.addr.port() == 8443)
            .expect("https");
        assert_eq!(
            https.flags,
            (LISTENER_PROTO_HTTPS << LISTENER_PROTOCOL_SHIFT) | LISTENER_TLS
        );
    }

    #[test]
    fn the_port_bitmap_has_one_bit_per_listener_port() {
        let wanted = desired(&[
            entry("0.0.0.0", 80, ListenerProtocol::Http),
            entry("::", 80, ListenerProtocol::Http),
            entry("10.0.0.1", 443, ListenerProtocol::Https),
            entry("0.0.0.0", 65535, ListenerProtocol::Http),
        ]);
        let words = port_bitmap(wanted.keys());
        assert_eq!(words.len(), 1024);
        assert_eq!(words[1], 1 << (80 - 64));
        assert_eq!(words[6], 1 << (443 - 6 * 64));
        assert_eq!(words[1023], 1 << 63);
        assert_eq!(words.iter().map(|w| w.count_ones()).sum::<u32>(), 3);
    }

    #[test]
    fn a_reload_keeps_the_ids_of_listeners_that_stay_and_adds_before_it_removes() {
        let mut slots = Slots::new(8);
        let first = desired(&[
            entry("0.0.0.0", 80, ListenerProtocol::Http),
            entry("0.0.0.0", 443, ListenerProtocol::Https),
        ]);
        let diff = slots.diff(&first);
        assert_eq!(diff.upserts.len(), 2);
        assert!(diff.upserts.iter().all(|(_, _, new)| *new));
        apply(&mut slots, &diff);
        let id_443 = slots
            .iter()
            .find(|(k, _)| k.port == 443)
            .map(|(_, s)| s.id)
            .expect("443");

        let second = desired(&[
            entry("0.0.0.0", 443, ListenerProtocol::Https),
            entry("0.0.0.0", 8080, ListenerProtocol::Http),
        ]);
        let diff = slots.diff(&second);
        assert_eq!(diff.upserts.len(), 1, "only the new listener is written");
        assert_eq!(diff.upserts[0].0.port, 8080);
        assert_eq!(diff.removes.len(), 1);
        assert_eq!(diff.removes[0].port, 80);
        apply(&mut slots, &diff);
        assert_eq!(
            slots.iter().find(|(k, _)| k.port == 443).map(|(_, s)| s.id),
            Some(id_443)
        );
        assert_eq!(slots.diff(&second), Diff::default(), "nothing left to do");
    }

    #[test]
    fn a_protocol_change_rewrites_the_entry_under_the_same_id() {
        let mut slots = Slots::new(4);
        let diff = slots.diff(&desired(&[entry("0.0.0.0", 443, ListenerProtocol::Https)]));
        apply(&mut slots, &diff);
        let diff = slots.diff(&desired(&[entry(
            "0.0.0.0",
            443,
            ListenerProtocol::TlsPassthrough,
        )]));
        assert_eq!(diff.upserts.len(), 1);
        let (_, slot, new) = diff.upserts[0];
        assert!(!new);
        assert_eq!(slot.id, 0);
        assert!(diff.removes.is_empty());
    }

    #[test]
    fn freed_ids_are_reused_last_and_overflow_is_counted() {
        let mut slots = Slots::new(2);
        let diff = slots.diff(&desired(&[entry("0.0.0.0", 1, ListenerProtocol::Http)]));
        apply(&mut slots, &diff);
        let diff = slots.diff(&desired(&[entry("0.0.0.0", 2, ListenerProtocol::Http)]));
        assert_eq!(
            diff.upserts[0].1.id, 1,
            "the next id, not the one being freed"
        );
        apply(&mut slots, &diff);
        let diff = slots.diff(&desired(&[
            entry("0.0.0.0", 2, ListenerProtocol::Http),
            entry("0.0.0.0", 3, ListenerProtocol::Http),
            entry("0.0.0.0", 4, ListenerProtocol::Http),
        ]));
        assert_eq!(diff.upserts.len(), 1);
        assert_eq!(diff.upserts[0].1.id, 0);
        assert_eq!(diff.overflow, 1);
    }
}
