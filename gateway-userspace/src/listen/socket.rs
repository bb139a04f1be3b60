//! Listening sockets with the options the data path needs.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
};

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections per socket (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// A non-blocking listening socket on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT` (one
/// per worker on the same address), `IPV6_V6ONLY` for IPv6 (so `0.0.0.0` and `::` can both
/// be bound), and `TCP_NODELAY` inherited by accepted sockets.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    bind_with(addr, false)
}

/// [`bind_reuseport`] with `IP_FREEBIND`, for an address the host need not have: the first
/// address of a Gateway address range, or a Gateway address no interface has. The kernel's
/// `sk_lookup` program steers the range, or the address, to this socket.
///
/// An IPv4 socket is also made transparent (`IP_TRANSPARENT`) when the privileges allow:
/// the kernel routes an IPv4 reply only from a source in its `local` routing table unless
/// the socket is transparent, so an address delivered here by policy routing (a local route
/// in another table) could take connections but never answer them. The kernel allows it
/// with `CAP_NET_RAW` or `CAP_NET_ADMIN`; without either the socket stays `IP_FREEBIND`
/// only, which serves every address the `local` table has, and one warning per address
/// says so. IPv6 replies are routed from such a source without it, so IPv6 sockets are
/// never made transparent. A transparent socket is what TPROXY and `-m socket
/// --transparent` rules match.
pub fn bind_reuseport_freebind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    bind_with(addr, true)
}

/// The bind failed because the host has no such address (`EADDRNOTAVAIL`), as opposed to
/// a port in use or a lack of privileges.
pub fn is_address_not_available(err: &std::io::Error) -> bool {
    err.raw_os_error() == Some(libc::EADDRNOTAVAIL)
}

fn bind_with(addr: SocketAddr, freebind: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if freebind {
        if addr.is_ipv6() {
            socket.set_freebind_v6(true)?;
        } else {
            socket.set_freebind_v4(true)?;
            if let Err(err) = socket.set_ip_transparent_v4(true) {
                transparent_refused(addr.ip(), &err);
            }
        }
    }
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Addresses already warned about: every worker binds each one, and every reload may.
static TRANSPARENT_REFUSED: Mutex<BTreeSet<IpAddr>> = Mutex::new(BTreeSet::new());

/// Warns, once per address, that replies from `ip` may not be routed.
fn transparent_refused(ip: IpAddr, err: &std::io::Error) {
    let first = TRANSPARENT_REFUSED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(ip);
    if first {
        tracing::warn!(
            addr = %ip,
            error = %err,
            "IP_TRANSPARENT refused (needs CAP_NET_RAW or CAP_NET_ADMIN): IPv4 replies from {ip} will not be routed unless the local routing table has it; the socket is IP_FREEBIND only"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_sockets_share_one_port_with_reuseport() {
        let first = bind_reuseport("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = first.local_addr().expect("addr");
        let second = bind_reuseport(addr).expect("second bind on the same port");
        assert_eq!(second.local_addr().expect("addr"), addr);
    }

    #[test]
    fn a_range_is_bound_on_an_address_the_host_does_not_have() {
        // 192.0.2.0/24 (TEST-NET-1) is on no interface of a test machine.
        let addr: SocketAddr = "192.0.2.0:0".parse().expect("addr");
        let refused = bind_reuseport(addr).expect_err("no interface has 192.0.2.0");
        assert!(is_address_not_available(&refused), "{refused}");
        let socket = bind_reuseport_freebind(addr).expect("IP_FREEBIND bind");
        assert_eq!(socket.local_addr().expect("addr").ip(), addr.ip());
    }

    #[test]
    fn only_ipv4_freebind_sockets_are_made_transparent() {
        let v6 = bind_reuseport_freebind("[2001:db8:7::1]:0".parse().expect("addr"))
            .expect("IP_FREEBIND bind");
        assert!(
            !socket2::SockRef::from(&v6)
                .ip_transparent_v6()
                .expect("getsockopt"),
            "IPv6 replies are routed without IP_TRANSPARENT"
        );
        let v4 = bind_reuseport_freebind("192.0.2.0:0".parse().expect("addr"))
            .expect("IP_FREEBIND bind");
        let transparent = socket2::SockRef::from(&v4)
            .ip_transparent_v4()
            .expect("getsockopt");
        // /proc/self belongs to the process's effective user.
        let root = std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata("/proc/self").expect("/proc/self"),
        ) == 0;
        if root {
            assert!(transparent, "root may set IP_TRANSPARENT");
        }
    }

    #[test]
    fn a_port_held_without_reuseport_cannot_be_bound() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = holder.local_addr().expect("addr");
        let refused = bind_reuseport(addr).expect_err("the port is held");
        assert!(!is_address_not_available(&refused), "{refused}");
    }
}
