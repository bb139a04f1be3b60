//! What the host says about itself: its addresses (for "the gateway's addresses" when a
//! listener binds the unspecified address) and its ephemeral port range.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// Every address configured on an interface of this network namespace.
pub fn local_addresses() -> std::io::Result<BTreeSet<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head` on success; it is freed below.
    #[allow(unsafe_code)]
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = BTreeSet::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed; the
        // address it points to (when not null) is a sockaddr of the family it names.
        #[allow(unsafe_code)]
        unsafe {
            let entry = &*cursor;
            let sa = entry.ifa_addr;
            if !sa.is_null() {
                match i32::from((*sa).sa_family) {
                    libc::AF_INET => {
                        let sin = &*sa.cast::<libc::sockaddr_in>();
                        out.insert(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*sa.cast::<libc::sockaddr_in6>();
                        out.insert(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cursor = entry.ifa_next;
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    #[allow(unsafe_code)]
    unsafe {
        libc::freeifaddrs(head)
    };
    Ok(out)
}

/// Whether `iface` is a loopback device (`IFF_LOOPBACK` in sysfs; `false` when unknown).
pub fn is_loopback(iface: &str) -> bool {
    const IFF_LOOPBACK: u32 = 0x8;
    if iface.contains('/') || iface.starts_with('.') {
        return false;
    }
    std::fs::read_to_string(format!("/sys/class/net/{iface}/flags"))
        .ok()
        .and_then(|flags| u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & IFF_LOOPBACK != 0)
}

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`, which IPv6 uses
/// too); Linux's default when it cannot be read.
pub fn ephemeral_ports() -> (u16, u16) {
    const LINUX_DEFAULT: (u16, u16) = (32768, 60999);
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| parse_port_range(&text))
        .unwrap_or(LINUX_DEFAULT)
}

fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut fields = text.split_whitespace();
    let low = fields.next()?.parse().ok()?;
    let high = fields.next()?.parse().ok()?;
    (low <= high).then_some((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_range_file_is_two_numbers() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("9000 8000"), None);
        assert_eq!(parse_port_range("x"), None);
    }

    #[test]
    fn lo_is_loopback_and_a_missing_interface_is_not() {
        assert!(is_loopback("lo"));
        assert!(!is_loopback("gw-no-such0"));
        assert!(!is_loopback("../lo"));
    }

    #[test]
    fn loopback_is_among_the_local_addresses() {
        let addrs = local_addresses().expect("getifaddrs");
        assert!(
            addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addrs:?}"
        );
    }
}
