//! TLS passthrough: read only the SNI of the ClientHello, route by it, splice the TCP
//! stream to a backend. Nothing here decrypts.
//!
//! The stages, in the order a connection on a TLS port meets them:
//! 1. [`peek_client_hello`]: `MSG_PEEK` the socket until [`peek_sni`] has a complete
//!    ClientHello. Nothing is consumed: on a mixed port a terminating listener hands the
//!    same untouched `TcpStream` to rustls, and a passthrough backend receives the
//!    ClientHello through the ordinary copy, so there is no replay buffer to carry.
//! 2. [`route`]: the listener the SNI selects on the bind (most specific hostname wins),
//!    then, for a passthrough listener, its TLSRoute (exact beats wildcard).
//! 3. [`pick_endpoint`]: a weighted backend and one of its ready endpoints.
//! 4. [`splice_bidirectional`]: both directions with half-close.
//!
//! No SNI, an SNI no route matches, or a route whose backend cannot be used end in
//! [`Decision::Close`]: the caller drops the TCP connection (FIN, or RST with
//! `SO_LINGER` 0), never a TLS alert, because the gateway speaks no TLS on this path.

pub mod client_hello;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use gateway_config::{
    Backend, Bind, Listener, ListenerProtocol, RouteTable, TlsTarget, UnresolvedBackend,
};
use tokio::io::Interest;
use tokio::net::TcpStream;

pub use client_hello::{peek_sni, Invalid, Peek, ServerName, MAX_PEEK_LEN};

/// How long a client may take to send its whole ClientHello (DESIGN §6: a connection
/// that sends nothing, or stalls its handshake, is closed after 10 s).
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The first peek reads this much; only a ClientHello longer than this (rare: large
/// post-quantum key shares, padding) grows the buffer to [`MAX_PEEK_LEN`].
const FIRST_PEEK_LEN: usize = 4 * 1024;

/// Why no ClientHello could be peeked; the caller closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum PeekError {
    /// The whole ClientHello did not arrive in time.
    #[error("no complete ClientHello within {after:?}")]
    Timeout {
        /// The timeout that expired.
        after: Duration,
    },
    /// The client closed (or half-closed) before its ClientHello was complete.
    #[error("client closed after {received} bytes, before a complete ClientHello")]
    Closed {
        /// Bytes received.
        received: usize,
    },
    /// The first bytes are not a TLS handshake.
    #[error("not TLS")]
    NotTls,
    /// A TLS record, but not a valid ClientHello.
    #[error("invalid ClientHello: {reason:?}")]
    Invalid {
        /// What was wrong.
        reason: Invalid,
    },
    /// The socket failed.
    #[error("peeking the ClientHello: {source}")]
    Io {
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Wait until the socket holds a complete ClientHello and return its SNI (`None`: the
/// ClientHello has no `server_name`), consuming nothing.
///
/// Uses `recv(MSG_PEEK)`. A plain peek loop would spin, because peeking leaves the
/// socket readable; here a peek that finds no new byte reports `WouldBlock` to tokio,
/// which clears the readiness, so the task sleeps until the next segment arrives.
pub async fn peek_client_hello(
    stream: &TcpStream,
    timeout: Duration,
) -> Result<Option<ServerName>, PeekError> {
    match tokio::time::timeout(timeout, peek_loop(stream)).await {
        Ok(r) => r,
        Err(_) => Err(PeekError::Timeout { after: timeout }),
    }
}

async fn peek_loop(stream: &TcpStream) -> Result<Option<ServerName>, PeekError> {
    let mut buf = vec![0u8; FIRST_PEEK_LEN];
    let mut seen = 0;
    loop {
        let ready = stream
            .ready(Interest::READABLE)
            .await
            .map_err(|source| PeekError::Io { source })?;
        let peeked = stream.try_io(Interest::READABLE, || {
            let n = recv_peek(stream, &mut buf)?;
            if n == seen && n > 0 && n < buf.len() {
                // Nothing new since the last peek: clear readiness and wait.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let n = match peeked {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if ready.is_read_closed() {
                    return Err(PeekError::Closed { received: seen });
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(PeekError::Io { source }),
        };
        if n == 0 {
            return Err(PeekError::Closed { received: 0 });
        }
        seen = n;
        match peek_sni(&buf[..n]) {
            Peek::Sni(name) => return Ok(Some(name)),
            Peek::NoSni => return Ok(None),
            Peek::NotTls => return Err(PeekError::NotTls),
            Peek::Invalid(reason) => return Err(PeekError::Invalid { reason }),
            Peek::NeedMore if n == buf.len() => {
                // The buffer is full (peek_sni says TooLarge at MAX_PEEK_LEN itself).
                buf.resize(MAX_PEEK_LEN, 0);
            }
            Peek::NeedMore => {}
        }
    }
}

/// `recv(fd, buf, MSG_PEEK | MSG_DONTWAIT)`.
#[allow(unsafe_code)]
fn recv_peek(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `buf` is a live, writable, exclusively borrowed slice of `buf.len()` bytes,
    // and the fd belongs to `stream`, which outlives the call.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Why a passthrough connection is closed without being forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    /// The ClientHello has no SNI, and the port has no listener for that.
    #[error("ClientHello without SNI")]
    NoSni,
    /// No listener of the port serves this SNI.
    #[error("no listener for the SNI")]
    NoListener,
    /// The passthrough listener has no TLSRoute for this SNI.
    #[error("no TLSRoute for the SNI")]
    NoRoute,
    /// The route's backends all have weight 0.
    #[error("every backend has weight 0")]
    NoWeight,
    /// The chosen backend cannot be used (not found, wrong kind, not permitted).
    #[error("backend unusable: {0:?}")]
    InvalidBackend(UnresolvedBackend),
    /// The chosen backend has no ready endpoint.
    #[error("backend has no ready endpoint")]
    NoEndpoints,
    /// TLS terminate: the backend's BackendTLSPolicy is invalid or unusable, or TLS to
    /// the backend failed; the decrypted stream is never sent in plaintext instead.
    #[error("backend TLS refused or failed")]
    BackendTls,
    /// The backend refused the connection or did not answer in time.
    #[error("backend connection failed")]
    Connect,
}

/// What to do with a connection on a TLS port, decided by its SNI.
#[derive(Debug)]
pub enum Decision<'t> {
    /// Passthrough: splice the TCP stream to a backend of this TLSRoute target.
    Forward {
        /// The passthrough listener.
        listener: &'t Listener,
        /// The TLSRoute rule's backends.
        target: &'t TlsTarget,
    },
    /// A terminating listener (HTTPS, or TLS mode Terminate) serves this SNI: hand the
    /// untouched stream to the TLS acceptor (`crate::tls`).
    Terminate {
        /// The listener the SNI selected.
        listener: &'t Listener,
    },
    /// Close the TCP connection, no TLS alert.
    Close(CloseReason),
}

/// Route a connection on a TLS bind by the SNI of its ClientHello (mixed ports: the
/// selected listener decides passthrough or terminate).
pub fn route<'t>(table: &'t RouteTable, bind: &Bind, sni: Option<&str>) -> Decision<'t> {
    let Some(listener) = table.select_listener(bind, sni) else {
        return Decision::Close(if sni.is_some() {
            CloseReason::NoListener
        } else {
            CloseReason::NoSni
        });
    };
    match listener.protocol {
        ListenerProtocol::TlsPassthrough => {}
        ListenerProtocol::Https | ListenerProtocol::TlsTerminate => {
            return Decision::Terminate { listener };
        }
        // A plain-HTTP listener never shares a bind with TLS ones (gateway-config).
        ListenerProtocol::Http => return Decision::Close(CloseReason::NoListener),
    }
    let Some(sni) = sni else {
        return Decision::Close(CloseReason::NoSni);
    };
    match table.route_tls(listener, sni) {
        Some(target) => Decision::Forward { listener, target },
        None => Decision::Close(CloseReason::NoRoute),
    }
}

/// Pick the endpoint to connect to: a backend by weight, then one of its ready
/// endpoints, both driven by `random` (e.g. `fastrand::u64(..)`).
pub fn pick_endpoint(target: &TlsTarget, random: u64) -> Result<SocketAddr, CloseReason> {
    pick(target, random).map(|(_, addr)| addr)
}

/// [`pick_endpoint`], with the backend it chose (a terminating listener must check the
/// backend's TLS policy before sending it plain bytes).
pub fn pick(target: &TlsTarget, random: u64) -> Result<(&Backend, SocketAddr), CloseReason> {
    if target.total_weight == 0 {
        return Err(CloseReason::NoWeight);
    }
    let mut point = random % u64::from(target.total_weight);
    let backend = target
        .backends
        .iter()
        .find(|b| {
            let w = u64::from(b.weight);
            if point < w {
                true
            } else {
                point -= w;
                false
            }
        })
        .ok_or(CloseReason::NoWeight)?;
    let port = backend
        .target
        .as_ref()
        .map_err(|e| CloseReason::InvalidBackend(*e))?;
    if port.endpoints.is_empty() {
        return Err(CloseReason::NoEndpoints);
    }
    // Another draw from the same number: high bits, independent of the weight pick.
    let i = (random >> 32) as usize % port.endpoints.len();
    let addr = port
        .endpoints
        .get(i)
        .copied()
        .ok_or(CloseReason::NoEndpoints)?;
    Ok((backend, addr))
}

/// Bytes moved by [`splice_bidirectional`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spliced {
    /// Client to backend.
    pub to_backend: u64,
    /// Backend to client.
    pub to_client: u64,
}

/// Copy buffer per direction: one full TLS record (16 KiB payload + header and tag) moves
/// in one read and one write.
const SPLICE_BUF: usize = 16 * 1024 + 512;

/// Copy both directions until both are done. When one side finishes sending (EOF), the
/// other side's write half is shut down (FIN) and the opposite direction goes on: TLS
/// close_notify and half-closed HTTP/1.0 clients work. Returns on the first error.
///
/// Each direction reads into a record-sized buffer that is never zeroed (`read_buf`
/// fills uninitialised capacity) and is only allocated when that direction starts: per
/// spliced connection this saved the 33 KiB `memset` of tokio's `copy_bidirectional`,
/// measurable with a connection per request (docs/benchmarks.md). The halves are the
/// sockets' borrowed halves, no lock. See docs/ARCHITECTURE.md for why not `splice(2)`.
pub async fn splice_bidirectional(
    client: &mut TcpStream,
    backend: &mut TcpStream,
) -> io::Result<Spliced> {
    let (mut client_read, mut client_write) = client.split();
    let (mut backend_read, mut backend_write) = backend.split();
    let (to_backend, to_client) = tokio::try_join!(
        one_way(&mut client_read, &mut backend_write),
        one_way(&mut backend_read, &mut client_write),
    )?;
    Ok(Spliced {
        to_backend,
        to_client,
    })
}

/// Copies `from` to `to` until `from` ends, then shuts `to` down for writing.
async fn one_way<R, W>(from: &mut R, to: &mut W) -> io::Result<u64>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = bytes::BytesMut::with_capacity(SPLICE_BUF);
    let mut total = 0u64;
    loop {
        buf.clear();
        let n = from.read_buf(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(total);
        }
        to.write_all(&buf).await?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_config::{compile, parse_str, CompileOptions, Compiled};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn build(yaml: &str) -> Compiled {
        let (m, _) = parse_str("test.yaml", yaml).expect("manifests parse");
        compile(&m, &CompileOptions::default())
    }

    fn tls_secret_yaml() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["t.example.com".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: cert, namespace: ns}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(&cert.pem()),
            indent(&key.serialize_pem())
        )
    }

    /// One port, mixed: passthrough for `*.pass.test` (exact and wildcard routes),
    /// terminate for `t.example.com`, an invalid-backend route for `bad.pass.test`.
    fn mixed() -> Compiled {
        let yaml = format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: ns}}
spec:
  gatewayClassName: x
  addresses: [{{value: 127.0.0.1}}]
  listeners:
  - {{name: pass, protocol: TLS, port: 8443, hostname: "*.pass.test", tls: {{mode: Passthrough}}}}
  - {{name: term, protocol: TLS, port: 8443, hostname: t.example.com, tls: {{mode: Terminate, certificateRefs: [{{name: cert}}]}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: exact, namespace: ns}}
spec: {{ports: [{{port: 443}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: exact-1, namespace: ns, labels: {{kubernetes.io/service-name: exact}}}}
addressType: IPv4
ports: [{{port: 9443}}]
endpoints: [{{addresses: [10.0.0.1]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: wild, namespace: ns}}
spec: {{ports: [{{port: 443}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: wild-1, namespace: ns, labels: {{kubernetes.io/service-name: wild}}}}
addressType: IPv4
ports: [{{port: 9443}}]
endpoints: [{{addresses: [10.0.0.2]}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: exact, namespace: ns}}
spec:
  parentRefs: [{{name: gw, sectionName: pass}}]
  hostnames: [a.pass.test]
  rules: [{{backendRefs: [{{name: exact, port: 443}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: wild, namespace: ns}}
spec:
  parentRefs: [{{name: gw, sectionName: pass}}]
  hostnames: ["*.pass.test"]
  rules: [{{backendRefs: [{{name: wild, port: 443}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: bad, namespace: ns}}
spec:
  parentRefs: [{{name: gw, sectionName: pass}}]
  hostnames: [bad.pass.test]
  rules: [{{backendRefs: [{{name: missing, port: 443}}]}}]
---
{}"#,
            tls_secret_yaml()
        );
        build(&yaml)
    }

    fn forward_to(c: &Compiled, sni: Option<&str>) -> Result<SocketAddr, String> {
        let bind = &c.table.binds()[0];
        match route(&c.table, bind, sni) {
            Decision::Forward { target, .. } => {
                pick_endpoint(target, 0x1234_5678_9abc).map_err(|e| format!("{e:?}"))
            }
            Decision::Terminate { listener } => Err(format!("terminate {}", listener.name)),
            Decision::Close(r) => Err(format!("{r:?}")),
        }
    }

    #[test]
    fn passthrough_routes_by_sni_exact_beats_wildcard_and_mixed_ports_dispatch() {
        let c = mixed();
        let ep = |ip: &str| Ok(format!("{ip}:9443").parse::<SocketAddr>().expect("addr"));
        let cases: &[(Option<&str>, Result<SocketAddr, String>)] = &[
            (Some("a.pass.test"), ep("10.0.0.1")),
            (Some("A.Pass.Test"), ep("10.0.0.1")),
            (Some("b.pass.test"), ep("10.0.0.2")),
            (Some("x.y.pass.test"), ep("10.0.0.2")),
            (Some("t.example.com"), Err("terminate term".into())),
            (Some("pass.test"), Err("NoListener".into())),
            (Some("other.test"), Err("NoListener".into())),
            (None, Err("NoSni".into())),
            (
                Some("bad.pass.test"),
                Err("InvalidBackend(NotFound)".into()),
            ),
        ];
        for (sni, want) in cases {
            assert_eq!(&forward_to(&c, *sni), want, "sni {sni:?}");
        }
    }

    fn client_hello(sni: &str) -> Vec<u8> {
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(sni.to_string()).expect("name");
        let mut conn =
            rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.expect("connect"), s.expect("accept").0)
    }

    #[tokio::test]
    async fn peek_waits_for_every_segment_and_consumes_nothing() {
        let hello = client_hello("seg.example.com");
        let (mut client, server) = pair().await;
        let writer = {
            let hello = hello.clone();
            tokio::spawn(async move {
                client.set_nodelay(true).expect("nodelay");
                for chunk in hello.chunks(100) {
                    client.write_all(chunk).await.expect("write");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                client
            })
        };
        let sni = peek_client_hello(&server, Duration::from_secs(5))
            .await
            .expect("peeked");
        assert_eq!(
            sni.map(|s| s.to_string()).as_deref(),
            Some("seg.example.com")
        );
        let _client = writer.await.expect("writer");
        // Nothing was consumed: the whole ClientHello is still there to read.
        let mut server = server;
        let mut got = vec![0u8; hello.len()];
        server.read_exact(&mut got).await.expect("read");
        assert_eq!(got, hello);
    }

    #[tokio::test]
    async fn peek_times_out_on_a_silent_or_stalled_client() {
        let (client, server) = pair().await;
        let err = peek_client_hello(&server, Duration::from_millis(100)).await;
        assert!(matches!(err, Err(PeekError::Timeout { .. })), "{err:?}");
        let mut client = client;
        client
            .write_all(&client_hello("a.b")[..20])
            .await
            .expect("write");
        let err = peek_client_hello(&server, Duration::from_millis(100)).await;
        assert!(matches!(err, Err(PeekError::Timeout { .. })), "{err:?}");
    }

    #[tokio::test]
    async fn peek_reports_close_not_tls_and_invalid() {
        let (mut client, server) = pair().await;
        client
            .write_all(&client_hello("a.b")[..20])
            .await
            .expect("write");
        client.shutdown().await.expect("fin");
        let err = peek_client_hello(&server, Duration::from_secs(5)).await;
        assert!(
            matches!(err, Err(PeekError::Closed { received: 20 })),
            "{err:?}"
        );

        let (mut client, server) = pair().await;
        client
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .expect("write");
        let err = peek_client_hello(&server, Duration::from_secs(5)).await;
        assert!(matches!(err, Err(PeekError::NotTls)), "{err:?}");

        let (mut client, server) = pair().await;
        client.write_all(&[22, 3, 1, 0, 0]).await.expect("write");
        let err = peek_client_hello(&server, Duration::from_secs(5)).await;
        assert!(matches!(err, Err(PeekError::Invalid { .. })), "{err:?}");

        let (client, server) = pair().await;
        drop(client);
        let err = peek_client_hello(&server, Duration::from_secs(5)).await;
        assert!(
            matches!(err, Err(PeekError::Closed { received: 0 })),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn peek_grows_its_buffer_for_a_large_client_hello() {
        // A 6 KiB ClientHello (padding extension), beyond the first peek's 4 KiB.
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0; 32]);
        body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        let mut exts = vec![0, 0, 0, 9, 0, 7, 0, 0, 4, b'b', b'i', b'g', b'1'];
        exts.extend_from_slice(&[0, 21, 0x17, 0x70]);
        exts.resize(exts.len() + 0x1770, 0);
        body.extend_from_slice(&u16::try_from(exts.len()).expect("len").to_be_bytes());
        body.extend_from_slice(&exts);
        let mut msg = vec![1, 0];
        msg.extend_from_slice(&u16::try_from(body.len()).expect("len").to_be_bytes());
        msg.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&u16::try_from(msg.len()).expect("len").to_be_bytes());
        rec.extend_from_slice(&msg);
        assert!(rec.len() > FIRST_PEEK_LEN);
        let (mut client, server) = pair().await;
        client.write_all(&rec).await.expect("write");
        let sni = peek_client_hello(&server, Duration::from_secs(5))
            .await
            .expect("peeked");
        assert_eq!(sni.map(|s| s.to_string()).as_deref(), Some("big1"));
    }

    #[tokio::test]
    async fn splice_copies_both_ways_and_propagates_half_close() {
        let (mut client, mut proxy_client_side) = pair().await;
        let (mut proxy_backend_side, mut backend) = pair().await;
        let proxy = tokio::spawn(async move {
            splice_bidirectional(&mut proxy_client_side, &mut proxy_backend_side).await
        });
        // The client sends and half-closes; the backend sees EOF, then answers.
        let big = vec![7u8; 200_000];
        client.write_all(&big).await.expect("write");
        client.shutdown().await.expect("half-close");
        let backend_task = tokio::spawn(async move {
            let mut got = Vec::new();
            backend.read_to_end(&mut got).await.expect("read to EOF");
            backend.write_all(b"pong").await.expect("answer after EOF");
            backend.shutdown().await.expect("close");
            got.len()
        });
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("read answer");
        assert_eq!(answer, b"pong");
        assert_eq!(backend_task.await.expect("backend"), big.len());
        let spliced = proxy.await.expect("proxy").expect("splice");
        assert_eq!(
            spliced,
            Spliced {
                to_backend: 200_000,
                to_client: 4
            }
        );
    }
}
