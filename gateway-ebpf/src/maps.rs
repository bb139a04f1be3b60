//! Every map of the object. Names are the `MAP_*` constants of `gateway-common` (the
//! attribute needs a literal; userspace looks each one up by its constant and fails loudly
//! when one is missing).

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, HashMap, LruHashMap, PerCpuArray, SockMap},
};
use gateway_common::{
    AddrKey, DataplaneConfig, FlowKey, FlowValue, ListenerKey, ListenerStats, ListenerValue, Stats,
    ACL_MAX_ENTRIES, DROP_REASONS, FLOWS_MAX_ENTRIES, GATEWAY_ADDRS_MAX_ENTRIES,
    LISTENERS_MAX_ENTRIES, LISTENER_PORT_WORDS, RANGES_MAX_ENTRIES, REUSEPORT_WORKERS_MAX,
    SOCKETS_DEFAULT_ENTRIES, SOCKET_SLOTS, SOCKET_STATS_SLOTS, STATS_SLOTS, STEER_PREFIXES_MAX,
    SYN_BUCKETS_MAX_ENTRIES,
};

#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(FLOWS_MAX_ENTRIES, 0);

#[map(name = "STATS")]
pub static STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(STATS_SLOTS, 0);

#[map(name = "DROPS")]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS, 0);

#[map(name = "LISTENERS")]
pub static LISTENERS: HashMap<ListenerKey, ListenerValue> =
    HashMap::with_max_entries(LISTENERS_MAX_ENTRIES, 0);

#[map(name = "LISTENER_STATS")]
pub static LISTENER_STATS: PerCpuArray<ListenerStats> =
    PerCpuArray::with_max_entries(LISTENERS_MAX_ENTRIES, 0);

#[map(name = "LISTENER_PORTS")]
pub static LISTENER_PORTS: Array<u64> = Array::with_max_entries(LISTENER_PORT_WORDS, 0);

#[map(name = "GATEWAY_ADDRS")]
pub static GATEWAY_ADDRS: HashMap<AddrKey, u32> =
    HashMap::with_max_entries(GATEWAY_ADDRS_MAX_ENTRIES, 0);

#[map(name = "LISTENER_RANGES_V4")]
pub static LISTENER_RANGES_V4: LpmTrie<[u8; 6], ListenerValue> =
    LpmTrie::with_max_entries(RANGES_MAX_ENTRIES, 0);

#[map(name = "LISTENER_RANGES_V6")]
pub static LISTENER_RANGES_V6: LpmTrie<[u8; 18], ListenerValue> =
    LpmTrie::with_max_entries(RANGES_MAX_ENTRIES, 0);

#[map(name = "GATEWAY_RANGES_V4")]
pub static GATEWAY_RANGES_V4: LpmTrie<[u8; 4], u32> =
    LpmTrie::with_max_entries(RANGES_MAX_ENTRIES, 0);

#[map(name = "GATEWAY_RANGES_V6")]
pub static GATEWAY_RANGES_V6: LpmTrie<[u8; 16], u32> =
    LpmTrie::with_max_entries(RANGES_MAX_ENTRIES, 0);

#[map(name = "ACL_V4")]
pub static ACL_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(ACL_MAX_ENTRIES, 0);

#[map(name = "ACL_V6")]
pub static ACL_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(ACL_MAX_ENTRIES, 0);

#[map(name = "SYN_BUCKETS")]
pub static SYN_BUCKETS: LruHashMap<AddrKey, u64> =
    LruHashMap::with_max_entries(SYN_BUCKETS_MAX_ENTRIES, 0);

#[map(name = "CONFIG")]
pub static CONFIG: Array<DataplaneConfig> = Array::with_max_entries(1, 0);

#[map(name = "STEER_V4")]
pub static STEER_V4: LpmTrie<[u8; 6], u32> = LpmTrie::with_max_entries(STEER_PREFIXES_MAX, 0);

#[map(name = "STEER_V6")]
pub static STEER_V6: LpmTrie<[u8; 18], u32> = LpmTrie::with_max_entries(STEER_PREFIXES_MAX, 0);

#[map(name = "SOCKETS")]
pub static SOCKETS: SockMap = SockMap::with_max_entries(SOCKETS_DEFAULT_ENTRIES, 0);

#[map(name = "REUSEPORT_GROUPS")]
pub static REUSEPORT_GROUPS: HashMap<ListenerKey, u32> = HashMap::with_max_entries(SOCKET_SLOTS, 0);

#[map(name = "REUSEPORT_LIVE")]
pub static REUSEPORT_LIVE: Array<u32> = Array::with_max_entries(REUSEPORT_WORKERS_MAX + 1, 0);

#[map(name = "SOCKET_STATS")]
pub static SOCKET_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SOCKET_STATS_SLOTS, 0);
