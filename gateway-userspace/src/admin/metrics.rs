//! Prometheus text exposition (format 0.0.4) of the process, eBPF and config counters.

use std::fmt::Write as _;

use crate::state::State;

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
        for attachment in &ebpf.attachments {
            out.sample(
                "gatewayd_xdp_attached",
                &[("iface", &attachment.iface), ("mode", attachment.mode)],
                1,
            );
        }
    }
    if let Some(ebpf) = ebpf {
        let s = ebpf.stats;
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
        out.single(
            "gatewayd_flows",
            "gauge",
            "Entries in the eBPF flow table (FLOWS).",
            ebpf.flow_count,
        );
        out.single(
            "gatewayd_flows_capacity",
            "gauge",
            "Capacity of the eBPF flow table.",
            gateway_common::FLOWS_MAX_ENTRIES,
        );
    }
    out.0
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
    fn own_cpu_time_is_readable() {
        assert!(process_cpu_seconds().is_some());
        assert!(process_resident_bytes().is_some_and(|b| b > 0));
    }
}
