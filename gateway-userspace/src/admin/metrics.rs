//! Prometheus text exposition (format 0.0.4) of the process, eBPF and config counters.

use std::{fmt::Write as _, sync::atomic::Ordering};

use crate::backend_tls::BackendTlsConfigs;
use crate::{
    drain::{self, WorkerReport},
    ebpf::StatsTotal,
    http::stats::{HttpTotals, BOUNDS_US},
    state::State,
    upstream::Upstreams,
};

/// Linux reports utime/stime in USER_HZ ticks, which is 100 on every architecture the
/// kernel ABI exposes to userspace.
const USER_HZ: f64 = 100.0;

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"");
                for c in val.chars() {
                    match c {
                        '\\' => self.0.push_str("\\\\"),
                        '"' => self.0.push_str("\\\""),
                        '\n' => self.0.push_str("\\n"),
                        c => self.0.push(c),
                    }
                }
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// utime+stime in seconds, from /proc/self/stat.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    // After ')': state is field 3; utime and stime are fields 14 and 15.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

fn process_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn process_open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

pub fn render(state: &State) -> String {
    let mut out = Out(String::with_capacity(4096));

    if let Some(cpu) = process_cpu_seconds() {
        out.single(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent in seconds.",
            cpu,
        );
    }
    if let Some(rss) = process_resident_bytes() {
        out.single(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss,
        );
    }
    if let Some(fds) = process_open_fds() {
        out.single(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds,
        );
    }
    out.single(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        state.start_time_unix(),
    );

    let config = state.config_counters();
    out.single(
        "gatewayd_config_reloads_total",
        "counter",
        "Configuration loads that succeeded and were swapped in.",
        config.reloads,
    );
    out.single(
        "gatewayd_config_reload_errors_total",
        "counter",
        "Configuration loads that failed; the previous configuration kept serving.",
        config.errors,
    );
    out.single(
        "gatewayd_config_last_reload_success",
        "gauge",
        "1 when the last configuration load succeeded.",
        u8::from(config.last_ok),
    );

    workers(&mut out, &drain::report(state));
    http(&mut out, &http_totals(state));
    backend_pools(&mut out, state);
    if let Some(snapshot) = state.snapshot() {
        backend_tls(&mut out, &snapshot.backend_tls);
    }

    let ebpf = state.ebpf_snapshot();
    out.single(
        "gatewayd_ebpf_loaded",
        "gauge",
        "1 when the eBPF programs are loaded.",
        u8::from(ebpf.is_some()),
    );
    out.family(
        "gatewayd_xdp_attached",
        "gauge",
        "XDP program attachments by interface and mode (driver or generic).",
    );
    if let Some(ebpf) = &ebpf {
        for attachment in ebpf.attachments.iter().filter(|a| a.hook == "xdp") {
            out.sample(
                "gatewayd_xdp_attached",
                &[("iface", &attachment.iface), ("mode", attachment.mode)],
                1,
            );
        }
    }
    out.family(
        "gatewayd_tc_attached",
        "gauge",
        "TC egress program (tc_reply) attachments by interface and mode (tcx or clsact).",
    );
    if let Some(ebpf) = &ebpf {
        for attachment in ebpf.attachments.iter().filter(|a| a.hook == "tc") {
            out.sample(
                "gatewayd_tc_attached",
                &[("iface", &attachment.iface), ("mode", attachment.mode)],
                1,
            );
        }
    }
    if let Some(ebpf) = ebpf {
        ebpf_counters(&mut out, &ebpf.stats, ebpf.flow_count);
    }
    out.0
}

/// Backend TLS (BackendTLSPolicy): handshakes and certificate checks since start, and the
/// profiles of the serving configuration.
fn backend_tls(out: &mut Out, configs: &BackendTlsConfigs) {
    let t = configs.totals();
    out.family(
        "gatewayd_backend_tls_handshakes_total",
        "counter",
        "TLS handshakes with backends that completed, by kind (full or resumed).",
    );
    out.sample(
        "gatewayd_backend_tls_handshakes_total",
        &[("kind", "full")],
        t.handshakes.saturating_sub(t.resumed),
    );
    out.sample(
        "gatewayd_backend_tls_handshakes_total",
        &[("kind", "resumed")],
        t.resumed,
    );
    out.single(
        "gatewayd_backend_tls_handshake_failures_total",
        "counter",
        "TLS handshakes with backends that failed or timed out (the request got a 502 or 504).",
        t.handshake_failures,
    );
    out.family(
        "gatewayd_backend_tls_certificate_checks_total",
        "counter",
        "Backend certificates checked, by result: validated in full, accepted from the \
         verify cache, or refused.",
    );
    for (result, n) in [
        ("full", t.full_validations),
        ("cache_hit", t.cache_hits),
        ("refused", t.verify_failures),
    ] {
        out.sample(
            "gatewayd_backend_tls_certificate_checks_total",
            &[("result", result)],
            n,
        );
    }
    let (usable, unusable) = configs.profile_counts();
    out.family(
        "gatewayd_backend_tls_profiles",
        "gauge",
        "Backend TLS profiles of the serving configuration, by state (unusable ones fail \
         closed).",
    );
    out.sample(
        "gatewayd_backend_tls_profiles",
        &[("state", "usable")],
        usable,
    );
    out.sample(
        "gatewayd_backend_tls_profiles",
        &[("state", "unusable")],
        unusable,
    );
    out.single(
        "gatewayd_backend_tls_verify_cache_chains",
        "gauge",
        "Verified certificate chains remembered by the verify caches.",
        configs.cached_chains(),
    );
}

/// Every worker's HTTP counters added up (workers sharing a runtime share one set).
fn http_totals(state: &State) -> HttpTotals {
    let mut totals = HttpTotals::default();
    for ctx in state.workers().map(|w| w.contexts()).unwrap_or_default() {
        ctx.http.add_to(&mut totals);
    }
    totals
}

/// Requests answered on HTTP listeners (plain and TLS-terminated, HTTP/1.1 and HTTP/2).
fn http(out: &mut Out, t: &HttpTotals) {
    out.family(
        "gatewayd_http_requests_total",
        "counter",
        "HTTP requests answered, by the status class of the response sent.",
    );
    for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
        out.sample(
            "gatewayd_http_requests_total",
            &[("code_class", class)],
            t.classes[i],
        );
    }
    let name = "gatewayd_http_request_duration_seconds";
    out.family(
        name,
        "histogram",
        "From a request's head being read to its response's last byte being handed to the client connection.",
    );
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for (i, bound) in BOUNDS_US.iter().enumerate() {
        cumulative += t.buckets[i];
        let le = (*bound as f64 / 1e6).to_string();
        out.sample(&bucket, &[("le", &le)], cumulative);
    }
    out.sample(&bucket, &[("le", "+Inf")], t.count());
    out.sample(&format!("{name}_sum"), &[], t.sum_us as f64 / 1e6);
    out.sample(&format!("{name}_count"), &[], t.count());
}

/// Backend connections the workers' pools hold.
fn backend_pools(out: &mut Out, state: &State) {
    let contexts = state.workers().map(|w| w.contexts()).unwrap_or_default();
    let mut family = |name: &str, kind: &str, help: &str, value: fn(&Upstreams) -> u64| {
        let total: u64 = contexts.iter().map(|c| value(&c.upstreams)).sum();
        out.single(name, kind, help, total);
    };
    family(
        "gatewayd_backend_idle_connections",
        "gauge",
        "Idle HTTP/1.1 backend connections pooled for reuse, all workers.",
        |u| u.idle_connections() as u64,
    );
    family(
        "gatewayd_backend_connection_waits_total",
        "counter",
        "Requests that waited for a connection at an endpoint's --backend-max-connections.",
        |u| u.stats().waited.load(Ordering::Relaxed),
    );
    family(
        "gatewayd_backend_connection_overflows_total",
        "counter",
        "Requests answered 503 because no connection of the endpoint came free in time.",
        |u| u.stats().overflowed.load(Ordering::Relaxed),
    );
    family(
        "gatewayd_backend_h2_connections",
        "gauge",
        "Shared HTTP/2 backend connections held, all workers.",
        |u| u.h2_connections() as u64,
    );
}

/// Per data-path worker: accepted connections and draining.
fn workers(out: &mut Out, workers: &[WorkerReport]) {
    out.family(
        "gatewayd_worker_connections_accepted_total",
        "counter",
        "Connections accepted on a data-path worker's listening sockets.",
    );
    for w in workers {
        out.sample(
            "gatewayd_worker_connections_accepted_total",
            &[("worker", &w.worker.to_string())],
            w.accepted,
        );
    }
    out.family(
        "gatewayd_worker_draining",
        "gauge",
        "1 while a worker drains: the kernel (sk_reuseport_pick) gives it no new connections.",
    );
    for w in workers {
        out.sample(
            "gatewayd_worker_draining",
            &[("worker", &w.worker.to_string())],
            u8::from(w.draining),
        );
    }
}

fn ebpf_counters(out: &mut Out, s: &StatsTotal, flow_count: usize) {
    out.family(
        "gatewayd_ebpf_feature",
        "gauge",
        "1 when a kernel-side feature runs (xdp, tc, pinning, acl, drop_unlisted, syn_guard, sk_lookup, sk_reuseport); 0 when off or refused by the kernel.",
    );
    for feature in &s.features {
        out.sample(
            "gatewayd_ebpf_feature",
            &[("feature", feature.name)],
            u8::from(feature.on),
        );
    }
    out.single(
        "gatewayd_xdp_packets_total",
        "counter",
        "Packets seen by xdp_flow (STATS).",
        s.packets,
    );
    out.single(
        "gatewayd_xdp_bytes_total",
        "counter",
        "Frame bytes seen by xdp_flow (STATS).",
        s.bytes,
    );
    out.single(
        "gatewayd_xdp_parse_failures_total",
        "counter",
        "Packets with a truncated or malformed header (STATS).",
        s.parse_failures,
    );
    out.single(
        "gatewayd_xdp_non_ip_total",
        "counter",
        "Packets that are neither IPv4 nor IPv6 (STATS).",
        s.non_ip,
    );
    out.family(
        "gatewayd_xdp_drops_total",
        "counter",
        "Packets xdp_flow dropped, by reason (acl, unlisted, syn_flood).",
    );
    for (reason, count) in &s.drops {
        out.sample("gatewayd_xdp_drops_total", &[("reason", reason)], count);
    }
    out.single(
        "gatewayd_tc_packets_total",
        "counter",
        "Packets seen by tc_reply on egress (STATS).",
        s.tc.packets,
    );
    out.single(
        "gatewayd_tc_bytes_total",
        "counter",
        "Bytes (skb length) seen by tc_reply on egress (STATS).",
        s.tc.bytes,
    );
    out.family(
        "gatewayd_listener_packets_total",
        "counter",
        "Packets per listener (addr:port, or range:port such as 192.0.2.0/24:8080): rx towards it (xdp_flow), tx of its flows back (tc_reply).",
    );
    for l in &s.listeners {
        for (direction, value) in [("rx", l.rx_packets), ("tx", l.tx_packets)] {
            out.sample(
                "gatewayd_listener_packets_total",
                &[
                    ("listener", &l.listener),
                    ("protocol", l.protocol),
                    ("direction", direction),
                ],
                value,
            );
        }
    }
    out.family(
        "gatewayd_listener_bytes_total",
        "counter",
        "L3 bytes per listener (addr:port, or range:port), rx and tx as for gatewayd_listener_packets_total.",
    );
    for l in &s.listeners {
        for (direction, value) in [("rx", l.rx_bytes), ("tx", l.tx_bytes)] {
            out.sample(
                "gatewayd_listener_bytes_total",
                &[
                    ("listener", &l.listener),
                    ("protocol", l.protocol),
                    ("direction", direction),
                ],
                value,
            );
        }
    }
    out.single(
        "gatewayd_ebpf_listeners",
        "gauge",
        "Entries in the kernel listener table (LISTENERS, and LISTENER_RANGES_* for address ranges).",
        s.listeners.len(),
    );
    out.single(
        "gatewayd_ebpf_listener_syncs_total",
        "counter",
        "Listener-table syncs (one per configuration swapped in).",
        s.listener_syncs,
    );
    out.single(
        "gatewayd_ebpf_listener_sync_errors_total",
        "counter",
        "Listener-table syncs with a failed map write.",
        s.listener_sync_errors,
    );
    out.single(
        "gatewayd_ebpf_gateway_addresses",
        "gauge",
        "Addresses and address ranges treated as the gateway's by --xdp-drop-unlisted (GATEWAY_ADDRS, GATEWAY_RANGES_*).",
        s.gateway_addrs,
    );
    out.family(
        "gatewayd_acl_prefixes",
        "gauge",
        "Denied source prefixes in the kernel ACL, by family.",
    );
    out.sample(
        "gatewayd_acl_prefixes",
        &[("family", "ipv4")],
        s.acl_v4_prefixes,
    );
    out.sample(
        "gatewayd_acl_prefixes",
        &[("family", "ipv6")],
        s.acl_v6_prefixes,
    );
    out.single(
        "gatewayd_acl_reloads_total",
        "counter",
        "ACL file reloads applied to the kernel.",
        s.acl_reloads,
    );
    out.single(
        "gatewayd_acl_reload_errors_total",
        "counter",
        "ACL file reloads that failed; the previous ACL kept applying.",
        s.acl_reload_errors,
    );
    out.single(
        "gatewayd_flows",
        "gauge",
        "Entries in the eBPF flow table (FLOWS).",
        flow_count,
    );
    out.single(
        "gatewayd_flows_capacity",
        "gauge",
        "Capacity of the eBPF flow table.",
        gateway_common::FLOWS_MAX_ENTRIES,
    );
    out.single(
        "gatewayd_flows_occupancy_ratio",
        "gauge",
        "Entries in the flow table over its capacity.",
        flow_count as f64 / f64::from(gateway_common::FLOWS_MAX_ENTRIES),
    );
    out.single(
        "gatewayd_flows_gc_evicted_total",
        "counter",
        "Flows removed after --flow-idle-timeout without a packet.",
        s.flows_gc_evicted,
    );
    socket_counters(out, &s.sockets);
}

/// The socket programs: `sk_lookup_steer` and `sk_reuseport_pick`.
fn socket_counters(out: &mut Out, s: &crate::ebpf::SocketCounters) {
    out.single(
        "gatewayd_sk_lookup_steered_total",
        "counter",
        "New connections to a steered address (a Gateway address range) handed to their bind's socket by sk_lookup_steer.",
        s.steered,
    );
    out.single(
        "gatewayd_sk_lookup_missed_total",
        "counter",
        "New connections to a steered prefix whose socket was missing (being rebound); the kernel's own lookup decided.",
        s.steer_missed,
    );
    out.single(
        "gatewayd_sk_lookup_prefixes",
        "gauge",
        "Destination prefixes (per port) in the steering tries (STEER_V4, STEER_V6).",
        s.steered_prefixes,
    );
    out.family(
        "gatewayd_sk_reuseport_total",
        "counter",
        "Worker choices by sk_reuseport_pick: picked (a worker not draining), fallback (the kernel's hash: a group or socket not registered yet), refused (every worker draining).",
    );
    for (result, value) in [
        ("picked", s.picked),
        ("fallback", s.pick_fallback),
        ("refused", s.refused),
    ] {
        out.sample("gatewayd_sk_reuseport_total", &[("result", result)], value);
    }
    out.single(
        "gatewayd_sk_reuseport_groups",
        "gauge",
        "SO_REUSEPORT groups (binds) whose worker sockets are registered for sk_reuseport_pick.",
        s.groups,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Out(String::new());
        out.sample("m", &[("iface", "a\"b\\c\nd")], 1);
        assert_eq!(out.0, "m{iface=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn kernel_counters_render_with_their_labels() {
        let stats = StatsTotal {
            drops: vec![("acl", 3), ("unlisted", 0), ("syn_flood", 7)],
            listeners: vec![crate::ebpf::ListenerCounters {
                id: 0,
                listener: "0.0.0.0:8080".into(),
                protocol: "http",
                rx_packets: 10,
                rx_bytes: 600,
                tx_packets: 9,
                tx_bytes: 540,
            }],
            features: vec![crate::ebpf::Feature {
                name: "tc",
                on: true,
            }],
            sockets: crate::ebpf::SocketCounters {
                steered: 5,
                refused: 2,
                ..crate::ebpf::SocketCounters::default()
            },
            ..StatsTotal::default()
        };
        let mut out = Out(String::new());
        ebpf_counters(&mut out, &stats, 16_384);
        let text = out.0;
        for line in [
            "gatewayd_xdp_drops_total{reason=\"acl\"} 3",
            "gatewayd_xdp_drops_total{reason=\"syn_flood\"} 7",
            "gatewayd_listener_packets_total{listener=\"0.0.0.0:8080\",protocol=\"http\",direction=\"rx\"} 10",
            "gatewayd_listener_bytes_total{listener=\"0.0.0.0:8080\",protocol=\"http\",direction=\"tx\"} 540",
            "gatewayd_ebpf_feature{feature=\"tc\"} 1",
            "gatewayd_flows 16384",
            "gatewayd_flows_occupancy_ratio 0.25",
            "gatewayd_sk_lookup_steered_total 5",
            "gatewayd_sk_reuseport_total{result=\"refused\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn http_requests_render_by_class_with_a_cumulative_histogram() {
        let stats = crate::http::stats::HttpStats::default();
        let d = std::time::Duration::from_micros;
        stats.record(200, d(90));
        stats.record(200, d(400));
        stats.record(404, d(400));
        stats.record(504, d(2_000_000));
        let mut totals = HttpTotals::default();
        stats.add_to(&mut totals);
        let mut out = Out(String::new());
        http(&mut out, &totals);
        let text = out.0;
        for line in [
            "# TYPE gatewayd_http_requests_total counter",
            "gatewayd_http_requests_total{code_class=\"2xx\"} 2",
            "gatewayd_http_requests_total{code_class=\"3xx\"} 0",
            "gatewayd_http_requests_total{code_class=\"4xx\"} 1",
            "gatewayd_http_requests_total{code_class=\"5xx\"} 1",
            "# TYPE gatewayd_http_request_duration_seconds histogram",
            "gatewayd_http_request_duration_seconds_bucket{le=\"0.0001\"} 1",
            "gatewayd_http_request_duration_seconds_bucket{le=\"0.00025\"} 1",
            "gatewayd_http_request_duration_seconds_bucket{le=\"0.0005\"} 3",
            "gatewayd_http_request_duration_seconds_bucket{le=\"1\"} 3",
            "gatewayd_http_request_duration_seconds_bucket{le=\"2.5\"} 4",
            "gatewayd_http_request_duration_seconds_bucket{le=\"10\"} 4",
            "gatewayd_http_request_duration_seconds_bucket{le=\"+Inf\"} 4",
            "gatewayd_http_request_duration_seconds_sum 2.00089",
            "gatewayd_http_request_duration_seconds_count 4",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn workers_render_accepted_connections_and_draining() {
        let mut out = Out(String::new());
        workers(
            &mut out,
            &[
                WorkerReport {
                    worker: 0,
                    draining: false,
                    accepted: 12,
                },
                WorkerReport {
                    worker: 1,
                    draining: true,
                    accepted: 3,
                },
            ],
        );
        for line in [
            "gatewayd_worker_connections_accepted_total{worker=\"0\"} 12",
            "gatewayd_worker_draining{worker=\"1\"} 1",
            "gatewayd_worker_draining{worker=\"0\"} 0",
        ] {
            assert!(
                out.0.lines().any(|l| l == line),
                "{line} missing from:\n{}",
                out.0
            );
        }
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(process_cpu_seconds().is_some());
        assert!(process_resident_bytes().is_some_and(|b| b > 0));
    }
}
