//! One client connection: hyper's HTTP/1.1 server, or its HTTP/2 server when the first
//! bytes are the HTTP/2 preface (h2c with prior knowledge, or h2 after ALPN), over the
//! accepted socket, watched for the DESIGN §6 timers.
//!
//! hyper's own `header_read_timeout` starts whenever a keep-alive connection waits for a
//! request, so it would also close idle connections after 10 s; instead this module keeps
//! two timers of its own, checked lazily by one sleep per connection: a request head (or,
//! on a new connection, the first request) must be complete within
//! [`HEADER_READ_TIMEOUT`], and a connection with no request in flight is closed after
//! [`IDLE_TIMEOUT`].

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

use bytes::{Buf as _, BytesMut};
use gateway_config::ListenerId;
use hyper::{body::Incoming, Request, Response, Version};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::server::TlsStream;
use tracing::debug;

use super::{body::RespBody, proxy};
use crate::worker::{ms_at, now_ms, tokio_instant, View, WorkerCtx};

/// A request head must be complete this long after its first byte (and a new connection
/// must send a complete request within it).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request in flight is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a connection being closed for idleness may take to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// What the gateway knows about a client connection.
pub struct ConnInfo {
    /// Client address.
    pub peer: SocketAddr,
    /// The bind (listening address) the connection came in on.
    pub bind: SocketAddr,
    /// The client's IP as text, written once per connection (X-Forwarded-For).
    pub peer_ip: IpText,
    /// `http` (plain listeners) or `https` (HTTPS listeners).
    pub scheme: &'static str,
    /// Which forwarding headers requests get (`--forwarded-headers`).
    pub forwarded: super::forward::ForwardedHeaders,
    /// HTTPS: the listener the SNI selected in `view`'s table. A request whose Host
    /// selects another listener is misdirected (421).
    pub sni_listener: Option<ListenerId>,
    /// The configuration the connection was accepted under; its requests use it when a
    /// newer configuration no longer has the connection's bind.
    pub view: Arc<View>,
    activity: Activity,
}

/// An IP address as text, kept inline: the longest form (an IPv4-mapped IPv6 address)
/// is 45 bytes.
pub struct IpText {
    buf: [u8; 45],
    len: u8,
}

impl IpText {
    /// `ip` in its usual notation; an IPv4-mapped IPv6 address (a dual-stack socket's
    /// IPv4 client) as IPv4: `192.0.2.7`, not `::ffff:192.0.2.7`.
    pub fn new(ip: std::net::IpAddr) -> Self {
        use std::io::Write as _;
        let ip = ip.to_canonical();
        let mut buf = [0u8; 45];
        let mut cursor = io::Cursor::new(&mut buf[..]);
        // Cannot fail: every address fits.
        let _ = write!(cursor, "{ip}");
        let len = u8::try_from(cursor.position()).unwrap_or(0);
        IpText { buf, len }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }
}

impl AsRef<Activity> for ConnInfo {
    fn as_ref(&self) -> &Activity {
        &self.activity
    }
}

/// Timestamps and counts the connection's timers read.
pub struct Activity {
    /// Requests whose response is not finished.
    in_flight: AtomicU32,
    /// When the current request head started (ms since the process epoch, +1; 0: none).
    head_since: AtomicU64,
    /// When the last response finished (ms since the process epoch).
    last: AtomicU64,
    /// HTTP/2: reads are frames, not request heads, so they do not start the head timer.
    h2: AtomicBool,
    /// The connection ends on a request hyper refused (400/414/431): drain what the client
    /// still sends before closing, so that the kernel does not reset the connection and
    /// destroy the error response before the client reads it.
    linger: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        let now = now_ms();
        Activity {
            in_flight: AtomicU32::new(0),
            head_since: AtomicU64::new(now + 1),
            last: AtomicU64::new(now),
            h2: AtomicBool::new(false),
            linger: AtomicBool::new(false),
        }
    }

    fn on_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
            && !self.h2.load(Ordering::Relaxed)
        {
            self.head_since.store(now_ms() + 1, Ordering::Relaxed);
        }
    }

    fn check(&self) -> Check {
        let now = now_ms();
        let head_ms = HEADER_READ_TIMEOUT.as_millis() as u64;
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Check::Wait(now + head_ms);
        }
        let head = self.head_since.load(Ordering::Relaxed);
        if head != 0 {
            let due = head - 1 + head_ms;
            return if now >= due {
                Check::HeaderTimeout
            } else {
                Check::Wait(due)
            };
        }
        let due = self.last.load(Ordering::Relaxed) + IDLE_TIMEOUT.as_millis() as u64;
        if now >= due {
            Check::Idle
        } else {
            // A request head may start at any time: look again within the head timeout.
            Check::Wait(due.min(now + head_ms))
        }
    }
}

enum Check {
    Wait(u64),
    HeaderTimeout,
    Idle,
}

/// Counts one request on its connection until the response body is done.
pub struct RequestGuard {
    conn: Arc<ConnInfo>,
    /// When the request head had been read.
    start: Instant,
    /// The status answered, and the worker whose counters it goes to: set once the
    /// response is ready; a request dropped before that is not counted.
    answered: Option<(u16, Arc<WorkerCtx>)>,
}

impl RequestGuard {
    fn new(conn: &Arc<ConnInfo>) -> Self {
        conn.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        conn.activity.head_since.store(0, Ordering::Relaxed);
        RequestGuard {
            conn: conn.clone(),
            start: Instant::now(),
            answered: None,
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let now = Instant::now();
        let activity = &self.conn.activity;
        activity.last.store(ms_at(now), Ordering::Relaxed);
        activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some((status, ctx)) = self.answered.take() {
            ctx.http
                .record(status, now.saturating_duration_since(self.start));
        }
    }
}

/// Vectored writes up to one TLS record of plaintext are joined before encryption.
const MAX_COALESCED: usize = 16 * 1024;

/// How long, and how much, a refused client is drained before its socket closes.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// The accepted socket (or the TLS stream over it), noting when bytes arrive. `None` only
/// while dropping.
struct WatchedIo<S: Stream, C: AsRef<Activity> = ConnInfo> {
    stream: Option<S>,
    /// The connection, for its [`Activity`].
    conn: Arc<C>,
    /// TLS: join the slices of a vectored write into one buffer first, so that a
    /// response head and a small body go out as one TLS record (one AEAD seal and one
    /// record header) instead of one record per slice.
    coalesce: Option<Vec<u8>>,
    /// What [`WatchedIo::poll_detect`] read to tell HTTP/2 from HTTP/1.1, handed out
    /// before anything else is read. `None` before the detection and once consumed.
    ahead: Option<BytesMut>,
    /// Plain TCP: a shutdown was asked for and left to the close that follows it (see
    /// `poll_shutdown`).
    shutdown_deferred: bool,
}

/// The HTTP/2 connection preface (RFC 9113 §3.4) that a client with prior knowledge, or
/// one that negotiated `h2`, starts with.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The first read of a connection: the size of a typical request head, so that the
/// detection and the whole head usually take one read of the socket.
const READ_AHEAD: usize = 4096;

/// The protocol a client connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// What a client connection's byte stream must be (a socket or a TLS stream).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for S {}

impl<S: Stream, C: AsRef<Activity>> WatchedIo<S, C> {
    /// A TLS stream: the one kind that joins vectored writes.
    fn is_tls(&self) -> bool {
        self.coalesce.is_some()
    }

    fn activity(&self) -> &Activity {
        (*self.conn).as_ref()
    }

    fn stream(&mut self) -> io::Result<Pin<&mut S>> {
        self.stream
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }

    /// Reads until the bytes are, or cannot be, the HTTP/2 preface: the first read takes
    /// up to [`READ_AHEAD`] bytes (usually the whole request head), and everything read
    /// is handed out again by `poll_read`. A client that ends the connection first (or
    /// sends anything else) is HTTP/1.1, as it is for hyper's own detection.
    fn poll_detect(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Protocol>> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        let ahead = self
            .ahead
            .get_or_insert_with(|| BytesMut::with_capacity(READ_AHEAD));
        loop {
            let have = ahead.len();
            if have >= H2_PREFACE.len() {
                return Poll::Ready(Ok(if ahead.starts_with(H2_PREFACE) {
                    Protocol::Http2
                } else {
                    Protocol::Http1
                }));
            }
            if ahead[..] != H2_PREFACE[..have] {
                return Poll::Ready(Ok(Protocol::Http1));
            }
            // Into the uninitialized capacity: nothing is zeroed first.
            if ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut *stream),
                cx,
                ahead
            ))? == 0
            {
                return Poll::Ready(Ok(Protocol::Http1));
            }
        }
    }
}

impl<S: Stream, C: AsRef<Activity>> Drop for WatchedIo<S, C> {
    fn drop(&mut self) {
        if !self.activity().linger.load(Ordering::Relaxed) {
            return;
        }
        let (Some(mut stream), Ok(rt)) =
            (self.stream.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let shutdown = self.shutdown_deferred;
        rt.spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            // The client gets its FIN now; the drain only keeps its late bytes from
            // turning the close into a reset.
            if shutdown {
                let _ = stream.shutdown().await;
            }
            let mut buf = vec![0u8; 16 * 1024];
            let mut drained = 0;
            let drain = async {
                while drained < LINGER_BYTES {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => drained += n,
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER_TIME, drain).await;
        });
    }
}

impl<S: Stream, C: AsRef<Activity>> AsyncRead for WatchedIo<S, C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if let Some(ahead) = this.ahead.as_mut() {
            let n = ahead.len().min(buf.remaining());
            buf.put_slice(&ahead[..n]);
            ahead.advance(n);
            if ahead.is_empty() {
                this.ahead = None;
            }
            if n > 0 {
                this.activity().on_read();
            }
            return Poll::Ready(Ok(()));
        }
        let polled = this.stream()?.poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity().on_read();
        }
        polled
    }
}

impl<S: Stream, C: AsRef<Activity>> AsyncWrite for WatchedIo<S, C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(crate::phase::poll_turn(cx, crate::phase::Side::Client));
        self.get_mut().stream()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(crate::phase::poll_turn(cx, crate::phase::Side::Client));
        let this = self.get_mut();
        if let (Some(joined), [_, _, ..]) = (this.coalesce.as_mut(), bufs) {
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            if total <= MAX_COALESCED {
                joined.clear();
                for b in bufs {
                    joined.extend_from_slice(b);
                }
                let stream = this
                    .stream
                    .as_mut()
                    .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
                return Pin::new(stream).poll_write(cx, joined);
            }
        }
        this.stream()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream()?.poll_flush(cx)
    }

    /// hyper shuts a connection down only when it is done with it, and the socket is
    /// closed right after: on plain TCP the close sends the FIN that `shutdown` would, so
    /// the `shutdown` call is skipped (one syscall less per connection). A lingering
    /// close (`Drop`) still shuts down before it drains. TLS shuts down as usual: its
    /// `close_notify` must go out.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.is_tls() {
            this.shutdown_deferred = true;
            return this.stream()?.poll_flush(cx);
        }
        this.stream()?.poll_shutdown(cx)
    }
}

/// The hyper service of one connection.
#[derive(Clone)]
struct Service {
    ctx: Arc<WorkerCtx>,
    conn: Arc<ConnInfo>,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<RespBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RespBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if req.version() == Version::HTTP_2 {
            self.conn.activity.h2.store(true, Ordering::Relaxed);
        }
        let mut guard = RequestGuard::new(&self.conn);
        let ctx = self.ctx.clone();
        let conn = self.conn.clone();
        let grpc = super::forward::is_grpc(req.headers());
        let fut = async move {
            let resp = proxy::respond_with(proxy::proxy(&ctx, &conn, req, grpc).await, grpc);
            // Counted when the body's last byte has been handed over (the guard drops).
            guard.answered = Some((resp.status().as_u16(), ctx));
            Ok(resp.map(|body| body.with_guard(guard)))
        };
        Box::pin(fut)
    }
}

/// Serves one accepted connection of a plain HTTP listener until it ends.
pub async fn serve(stream: TcpStream, peer: SocketAddr, bind: SocketAddr, ctx: Arc<WorkerCtx>) {
    let Some(view) = ctx.view() else {
        return;
    };
    serve_stream(stream, peer, bind, ctx, view, None).await;
}

/// Serves one HTTPS connection after its handshake: `view` is the configuration it was
/// accepted under (the one whose certificate it got), `sni_listener` the listener its
/// SNI selected there. HTTP/2 or HTTP/1.1 as ALPN chose (told apart by the preface, so a
/// client without ALPN gets HTTP/1.1).
pub async fn serve_tls(
    stream: TlsStream<TcpStream>,
    peer: SocketAddr,
    bind: SocketAddr,
    ctx: Arc<WorkerCtx>,
    view: Arc<View>,
    sni_listener: ListenerId,
) {
    serve_stream(stream, peer, bind, ctx, view, Some(sni_listener)).await;
}

async fn serve_stream<S: Stream>(
    stream: S,
    peer: SocketAddr,
    bind: SocketAddr,
    ctx: Arc<WorkerCtx>,
    view: Arc<View>,
    sni_listener: Option<ListenerId>,
) {
    let conn = Arc::new(ConnInfo {
        peer,
        bind,
        peer_ip: IpText::new(peer.ip()),
        scheme: if sni_listener.is_some() {
            "https"
        } else {
            "http"
        },
        forwarded: ctx.forwarded,
        sni_listener,
        view,
        activity: Activity::new(),
    });
    let mut io = WatchedIo {
        stream: Some(stream),
        conn: conn.clone(),
        coalesce: sni_listener.map(|_| Vec::new()),
        ahead: None,
        shutdown_deferred: false,
    };
    // A new connection must send a complete request within the head timeout: the
    // detection is the first part of it.
    let timer = tokio::time::sleep(HEADER_READ_TIMEOUT);
    tokio::pin!(timer);
    let protocol = tokio::select! {
        biased;
        detected = std::future::poll_fn(|cx| io.poll_detect(cx)) => match detected {
            Ok(protocol) => protocol,
            Err(err) => {
                debug!(%peer, error = %err, "client connection ended before a request");
                return;
            }
        },
        () = timer.as_mut() => {
            debug!(%peer, "request head not complete in time: closing");
            return;
        }
    };
    let service = Service {
        ctx: ctx.clone(),
        conn: conn.clone(),
    };
    let io = TokioIo::new(io);
    let servers = &ctx.servers;
    let activity = &conn.activity;
    // One `run` per server type; the two differ only in the connection they drive.
    match protocol {
        Protocol::Http1 => {
            let http1 = servers.http1.serve_connection(io, service).with_upgrades();
            run(http1, |c| c.graceful_shutdown(), timer, activity, peer).await;
        }
        Protocol::Http2 => {
            let http2 = servers.http2.serve_connection(io, service);
            run(http2, |c| c.graceful_shutdown(), timer, activity, peer).await;
        }
    }
}

/// Drives a client connection's server until it ends, under the connection's timers:
/// `shutdown` starts a graceful close (the idle timeout).
async fn run<C>(
    connection: C,
    shutdown: impl Fn(Pin<&mut C>),
    mut timer: Pin<&mut tokio::time::Sleep>,
    activity: &Activity,
    peer: SocketAddr,
) where
    C: Future<Output = hyper::Result<()>>,
{
    let mut connection = std::pin::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            result = connection.as_mut() => {
                if let Err(err) = result {
                    debug!(%peer, error = %err, "client connection ended with an error");
                    if err.is_parse() {
                        activity.linger.store(true, Ordering::Relaxed);
                    }
                }
                return;
            }
            () = timer.as_mut() => {
                if closing {
                    return;
                }
                match activity.check() {
                    Check::Wait(at) => timer.as_mut().reset(tokio_instant(at)),
                    Check::HeaderTimeout => {
                        debug!(%peer, "request head not complete in time: closing");
                        return;
                    }
                    Check::Idle => {
                        debug!(%peer, "idle keep-alive connection: closing");
                        closing = true;
                        shutdown(connection.as_mut());
                        timer
                            .as_mut()
                            .reset(tokio::time::Instant::now() + CLOSE_GRACE);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    #[test]
    fn client_addresses_are_written_in_their_usual_form() {
        let text = |s: &str| IpText::new(s.parse().expect("ip")).as_str().to_string();
        assert_eq!(text("192.0.2.7"), "192.0.2.7");
        assert_eq!(text("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(text("2001:db8::7"), "2001:db8::7");
        assert_eq!(
            text("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
    }

    /// A stream that counts the reads that reached it.
    struct Counted {
        inner: DuplexStream,
        reads: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    impl AsRef<Activity> for Activity {
        fn as_ref(&self) -> &Activity {
            self
        }
    }

    fn watched(inner: DuplexStream, reads: &Arc<AtomicUsize>) -> WatchedIo<Counted, Activity> {
        WatchedIo {
            stream: Some(Counted {
                inner,
                reads: reads.clone(),
            }),
            conn: Arc::new(Activity::new()),
            coalesce: None,
            ahead: None,
            shutdown_deferred: false,
        }
    }

    async fn detect(io: &mut WatchedIo<Counted, Activity>) -> io::Result<Protocol> {
        std::future::poll_fn(|cx| io.poll_detect(cx)).await
    }

    #[tokio::test]
    async fn an_http1_head_is_detected_and_read_again_from_one_socket_read() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let reads = Arc::new(AtomicUsize::new(0));
        let mut io = watched(server, &reads);
        let head =
            b"GET /a/long/enough/path HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n";
        client.write_all(head).await.expect("write");

        assert_eq!(detect(&mut io).await.expect("detected"), Protocol::Http1);
        assert_eq!(reads.load(Ordering::Relaxed), 1, "one read of the socket");
        client.write_all(b"next").await.expect("write");

        // hyper reads the head in pieces of its own choosing: all of it comes back.
        let mut first = [0u8; 10];
        io.read_exact(&mut first).await.expect("10 bytes");
        let mut rest = vec![0u8; head.len() - 10];
        io.read_exact(&mut rest)
            .await
            .expect("the rest of the head");
        assert_eq!([&first[..], &rest[..]].concat(), head.to_vec());
        assert_eq!(
            reads.load(Ordering::Relaxed),
            1,
            "still one read of the socket"
        );
        assert!(io.ahead.is_none(), "the read-ahead is used once");

        let mut next = [0u8; 4];
        io.read_exact(&mut next).await.expect("what followed");
        assert_eq!(&next, b"next");

        drop(client);
        let mut end = Vec::new();
        io.read_to_end(&mut end).await.expect("EOF");
        assert!(end.is_empty());
    }

    #[tokio::test]
    async fn the_http2_preface_is_detected_even_when_it_arrives_in_pieces() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let reads = Arc::new(AtomicUsize::new(0));
        let mut io = watched(server, &reads);
        let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
        let sender = tokio::spawn(async move {
            for piece in [&H2_PREFACE[..3], &H2_PREFACE[3..20], &H2_PREFACE[20..]] {
                client.write_all(piece).await.expect("write");
                tokio::task::yield_now().await;
            }
            client.write_all(&settings).await.expect("write");
            client
        });
        assert_eq!(detect(&mut io).await.expect("detected"), Protocol::Http2);
        let _client = sender.await.expect("sender");
        let mut got = vec![0u8; H2_PREFACE.len() + settings.len()];
        io.read_exact(&mut got).await.expect("preface and frame");
        assert_eq!(&got[..24], &H2_PREFACE[..]);
        assert_eq!(&got[24..], &settings[..]);
    }

    #[tokio::test]
    async fn a_start_that_leaves_the_preface_is_http1_without_waiting_for_24_bytes() {
        let (mut client, server) = tokio::io::duplex(1024);
        let reads = Arc::new(AtomicUsize::new(0));
        let mut io = watched(server, &reads);
        // "PRI " then something else: HTTP/1.1 (hyper answers the method), decided on
        // these 5 bytes alone.
        client.write_all(b"PRI x").await.expect("write");
        assert_eq!(detect(&mut io).await.expect("detected"), Protocol::Http1);
        let mut got = [0u8; 5];
        io.read_exact(&mut got).await.expect("the 5 bytes");
        assert_eq!(&got, b"PRI x");
    }

    #[tokio::test]
    async fn a_connection_closed_before_sending_anything_is_http1_and_reads_as_eof() {
        let (client, server) = tokio::io::duplex(1024);
        let reads = Arc::new(AtomicUsize::new(0));
        let mut io = watched(server, &reads);
        drop(client);
        assert_eq!(detect(&mut io).await.expect("detected"), Protocol::Http1);
        let mut buf = [0u8; 24];
        assert_eq!(io.read(&mut buf).await.expect("EOF"), 0);
    }

    #[tokio::test]
    async fn a_shutdown_on_plain_tcp_is_left_to_the_close() {
        let (mut client, server) = tokio::io::duplex(1024);
        let reads = Arc::new(AtomicUsize::new(0));
        let mut io = watched(server, &reads);
        io.write_all(b"response").await.expect("write");
        io.shutdown().await.expect("shutdown");
        let mut got = [0u8; 8];
        client.read_exact(&mut got).await.expect("the response");
        // Nothing more, and no EOF yet: the stream itself was not shut down.
        let mut more = [0u8; 1];
        let pending = tokio::time::timeout(Duration::from_millis(50), client.read(&mut more)).await;
        assert!(pending.is_err(), "EOF before the close: {pending:?}");
        drop(io);
        assert_eq!(client.read(&mut more).await.expect("EOF"), 0);
    }

    #[tokio::test]
    async fn a_lingering_close_shuts_down_first_then_drains_what_the_client_still_sends() {
        let (mut client, server) = tokio::io::duplex(1024);
        let reads = Arc::new(AtomicUsize::new(0));
        let mut io = watched(server, &reads);
        io.write_all(b"431").await.expect("write");
        io.shutdown().await.expect("shutdown");
        io.conn.linger.store(true, Ordering::Relaxed);
        drop(io);
        // The FIN comes first, not when the drain gives up (LINGER_TIME).
        let mut got = Vec::new();
        tokio::time::timeout(LINGER_TIME / 2, client.read_to_end(&mut got))
            .await
            .expect("EOF before the drain ends")
            .expect("response, then EOF");
        assert_eq!(got, b"431");
        // The drain still reads: the client's late bytes are taken, not refused.
        client
            .write_all(&[b'x'; 4096])
            .await
            .expect("late bytes drained");
    }
}
