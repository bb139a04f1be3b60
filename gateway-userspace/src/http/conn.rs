//! One client connection: hyper's HTTP/1.1 + h2c (prior knowledge) server over the
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
    time::Duration,
};

use bytes::{Buf as _, BytesMut};
use gateway_config::ListenerId;
use hyper::{body::Incoming, header::HeaderValue, Request, Response, Version};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::server::TlsStream;
use tracing::debug;

use super::{body::RespBody, proxy};
use crate::worker::{now_ms, tokio_instant, View, WorkerCtx};

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
    /// The client's IP as a header value, made once per connection (X-Forwarded-For).
    pub peer_ip: HeaderValue,
    /// `http` (plain listeners) or `https` (HTTPS listeners).
    pub scheme: &'static str,
    /// HTTPS: the listener the SNI selected in `view`'s table. A request whose Host
    /// selects another listener is misdirected (421).
    pub sni_listener: Option<ListenerId>,
    /// The configuration the connection was accepted under; its requests use it when a
    /// newer configuration no longer has the connection's bind.
    pub view: Arc<View>,
    activity: Arc<Activity>,
}

/// Timestamps and counts the connection's timers read.
struct Activity {
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
    activity: Arc<Activity>,
}

impl RequestGuard {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.head_since.store(0, Ordering::Relaxed);
        RequestGuard {
            activity: activity.clone(),
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.activity.last.store(now_ms(), Ordering::Relaxed);
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Vectored writes up to one TLS record of plaintext are joined before encryption.
const MAX_COALESCED: usize = 16 * 1024;

/// How long, and how much, a refused client is drained before its socket closes.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// The accepted socket (or the TLS stream over it), noting when bytes arrive. `None` only
/// while dropping.
struct WatchedIo<S: Stream> {
    stream: Option<S>,
    activity: Arc<Activity>,
    /// TLS: join the slices of a vectored write into one buffer first, so that a
    /// response head and a small body go out as one TLS record (one AEAD seal and one
    /// record header) instead of one record per slice.
    coalesce: Option<Vec<u8>>,
    /// Plain TCP: the first read of the connection goes into this buffer, whatever size
    /// hyper asks for. hyper first reads exactly 24 bytes (is it the HTTP/2 preface?),
    /// then the rest of the request head: without this, two `recvfrom` per new
    /// connection where one does. `None` once consumed, and for TLS (rustls buffers).
    ahead: Option<ReadAhead>,
}

/// Bytes read from the socket and not yet handed out.
struct ReadAhead {
    buf: BytesMut,
    /// The socket has been read into `buf` (then `buf` is what is left).
    filled: bool,
}

impl ReadAhead {
    fn new() -> Self {
        ReadAhead {
            buf: BytesMut::with_capacity(READ_AHEAD),
            filled: false,
        }
    }
}

/// The first read of a plain connection: the size of a typical request head.
const READ_AHEAD: usize = 4096;

/// What a client connection's byte stream must be (a socket or a TLS stream).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for S {}

impl<S: Stream> WatchedIo<S> {
    fn stream(&mut self) -> io::Result<Pin<&mut S>> {
        self.stream
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl<S: Stream> Drop for WatchedIo<S> {
    fn drop(&mut self) {
        if !self.activity.linger.load(Ordering::Relaxed) {
            return;
        }
        let (Some(mut stream), Ok(rt)) =
            (self.stream.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        rt.spawn(async move {
            use tokio::io::AsyncReadExt as _;
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

impl<S: Stream> AsyncRead for WatchedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if let Some(ahead) = this.ahead.as_mut() {
            if !ahead.filled {
                let stream = this
                    .stream
                    .as_mut()
                    .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
                // Into the uninitialized capacity: nothing is zeroed first.
                ready!(tokio_util::io::poll_read_buf(
                    Pin::new(stream),
                    cx,
                    &mut ahead.buf
                ))?;
                ahead.filled = true;
            }
            let n = ahead.buf.len().min(buf.remaining());
            buf.put_slice(&ahead.buf[..n]);
            ahead.buf.advance(n);
            if ahead.buf.is_empty() {
                this.ahead = None;
            }
            if n > 0 {
                this.activity.on_read();
            }
            return Poll::Ready(Ok(()));
        }
        let polled = this.stream()?.poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.on_read();
        }
        polled
    }
}

impl<S: Stream> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().stream()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
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

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream()?.poll_shutdown(cx)
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
        let guard = RequestGuard::new(&self.conn.activity);
        let ctx = self.ctx.clone();
        let conn = self.conn.clone();
        let grpc = super::forward::is_grpc(req.headers());
        let fut = async move {
            let resp = proxy::respond_with(proxy::proxy(&ctx, &conn, req, grpc).await, grpc);
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
/// SNI selected there. HTTP/2 or HTTP/1.1 as ALPN chose (hyper tells them apart by the
/// preface, so a client without ALPN gets HTTP/1.1).
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
    let activity = Arc::new(Activity::new());
    let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let conn = Arc::new(ConnInfo {
        peer,
        bind,
        peer_ip,
        scheme: if sni_listener.is_some() {
            "https"
        } else {
            "http"
        },
        sni_listener,
        view,
        activity: activity.clone(),
    });
    let io = TokioIo::new(WatchedIo {
        stream: Some(stream),
        activity: activity.clone(),
        coalesce: sni_listener.map(|_| Vec::new()),
        ahead: sni_listener.is_none().then(ReadAhead::new),
    });
    let service = Service {
        ctx: ctx.clone(),
        conn,
    };
    let connection = ctx.server.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let timer = tokio::time::sleep(HEADER_READ_TIMEOUT);
    tokio::pin!(timer);
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            result = connection.as_mut() => {
                if let Err(err) = result {
                    debug!(%peer, error = %err, "client connection ended with an error");
                    if err.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_parse) {
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
                        connection.as_mut().graceful_shutdown();
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

    fn watched(inner: DuplexStream, reads: &Arc<AtomicUsize>) -> WatchedIo<Counted> {
        WatchedIo {
            stream: Some(Counted {
                inner,
                reads: reads.clone(),
            }),
            activity: Arc::new(Activity::new()),
            coalesce: None,
            ahead: Some(ReadAhead::new()),
        }
    }

    #[tokio::test]
    async fn the_preface_sniff_and_the_rest_of_the_head_come_from_one_socket_read() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let reads = Arc::new(AtomicUsize::new(0));
        let mut io = watched(server, &reads);
        let head =
            b"GET /a/long/enough/path HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n";
        client.write_all(head).await.expect("write");
        client.write_all(b"next").await.expect("write");

        let mut preface = [0u8; 24];
        io.read_exact(&mut preface).await.expect("24 bytes");
        let mut rest = vec![0u8; head.len() - 24];
        io.read_exact(&mut rest)
            .await
            .expect("the rest of the head");
        assert_eq!([&preface[..], &rest[..]].concat(), head.to_vec());
        assert_eq!(reads.load(Ordering::Relaxed), 1, "one read of the socket");

        let mut next = [0u8; 4];
        io.read_exact(&mut next).await.expect("what followed");
        assert_eq!(&next, b"next");
        assert!(io.ahead.is_none(), "the read-ahead is used once");

        drop(client);
        let mut end = Vec::new();
        io.read_to_end(&mut end).await.expect("EOF");
        assert!(end.is_empty());
    }

    #[tokio::test]
    async fn a_connection_closed_before_sending_anything_reads_as_eof() {
        let (client, server) = tokio::io::duplex(1024);
        let reads = Arc::new(AtomicUsize::new(0));
        let mut io = watched(server, &reads);
        drop(client);
        let mut buf = [0u8; 24];
        assert_eq!(io.read(&mut buf).await.expect("EOF"), 0);
    }
}
