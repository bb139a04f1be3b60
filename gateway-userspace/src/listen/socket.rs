//! Listening sockets with the options the data path needs.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections per socket (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// A non-blocking listening socket on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT` (one
/// per worker on the same address), `IPV6_V6ONLY` for IPv6 (so `0.0.0.0` and `::` can both
/// be bound), and `TCP_NODELAY` inherited by accepted sockets.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    bind_with(addr, false)
}

/// [`bind_reuseport`] with `IP_FREEBIND`, for the first address of a Gateway address range:
/// the host need not have it; the kernel's `sk_lookup` program steers the whole range to
/// this socket.
pub fn bind_reuseport_range(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    bind_with(addr, true)
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
        }
    }
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
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
        assert!(bind_reuseport(addr).is_err());
        let socket = bind_reuseport_range(addr).expect("IP_FREEBIND bind");
        assert_eq!(socket.local_addr().expect("addr").ip(), addr.ip());
    }

    #[test]
    fn a_port_held_without_reuseport_cannot_be_bound() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = holder.local_addr().expect("addr");
        assert!(bind_reuseport(addr).is_err());
    }
}
