//! Upstream: connections to backend endpoints, pooled per worker.
//!
//! A pool is keyed by everything that changes a connection's identity ([`PoolKey`]: the
//! endpoint address, the protocol spoken to it (which fixes the ALPN offer over TLS), and
//! the identity of the backend TLS profile, so that a connection verified under one
//! policy's roots and names is never reused for another, nor after they changed). HTTP/1.1 connections ([`h1`]) are kept idle in a bounded LIFO stack and reused
//! one request at a time, driven by the task of the request that uses them; an HTTP/2 (h2c)
//! connection (hyper's client, a task of its own) is shared by all requests to the endpoint.
//! Endpoints of a backend are balanced by power-of-two-choices on in-flight requests.
//!
//! Each worker owns its own [`Upstreams`], so the locks here are uncontended in the
//! one-worker-per-core mode; they exist so that the same code also runs on a shared
//! multi-thread runtime.

mod body;
mod error;
mod h1;
mod io;

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use hyper::{
    client::conn::{http1, http2},
    Request, Response,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tracing::debug;

use self::h1::H1Conn;
use crate::backend_tls::{self, Alpn, BackendTlsConfigs, Negotiated, ProfileIdentity, ProfileTls};
use crate::worker::now_ms;

pub use body::{BoxError, ReqBody, UpstreamBody};
pub use error::UpstreamError;
pub use io::BackendIo;

/// Idle HTTP/1.1 connections kept per endpoint and worker; more are closed on return.
pub const MAX_IDLE_PER_ENDPOINT: usize = 128;
/// An idle backend connection is closed after this long by default
/// (`--backend-idle-timeout`; below the usual 60 s of backends, so that the backend rarely
/// closes a connection we are about to reuse).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting to an endpoint gives up after this long (a 504).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An endpoint's state is dropped when it has been unused this long.
const ENDPOINT_TTL: Duration = Duration::from_secs(300);

/// What is spoken to an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 over TCP.
    Http1,
    /// HTTP/2 with prior knowledge over TCP (`appProtocol: kubernetes.io/h2c`, gRPC).
    H2c,
}

impl Protocol {
    /// What is offered by ALPN over TLS: `http/1.1` for HTTP/1.1, `h2` (then
    /// `http/1.1`, which is refused) for HTTP/2.
    fn alpn(self) -> Alpn {
        match self {
            Protocol::Http1 => Alpn::Http1,
            Protocol::H2c => Alpn::H2Http1,
        }
    }
}

/// Everything that changes a backend connection's identity: endpoint, protocol (and with
/// it the ALPN offer), and the backend TLS profile's identity, so that connections
/// verified under one policy are never reused for another, nor after its roots, names or
/// client certificate changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Endpoint address.
    pub addr: SocketAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// `None`: plain TCP.
    pub tls: Option<ProfileIdentity>,
}

/// The pools of one worker.
pub struct Upstreams {
    endpoints: Mutex<HashMap<PoolKey, Arc<Endpoint>>>,
    /// How long a connection with no request on it is kept.
    idle_timeout: Duration,
}

impl Default for Upstreams {
    fn default() -> Self {
        Upstreams::new(DEFAULT_IDLE_TIMEOUT)
    }
}

/// One endpoint as seen by one worker: in-flight count, idle HTTP/1.1 connections, the
/// shared HTTP/2 connection.
pub struct Endpoint {
    key: PoolKey,
    /// The profile its connections are made and verified with (`None`: plain TCP).
    tls: Option<Arc<ProfileTls>>,
    in_flight: AtomicUsize,
    last_used: AtomicU64,
    /// How long a connection with no request on it is kept.
    idle_timeout: Duration,
    /// Set when its TLS profile is gone: connections are no longer pooled.
    retired: AtomicBool,
    idle: Mutex<Vec<Idle>>,
    h2: tokio::sync::Mutex<Option<http2::SendRequest<ReqBody>>>,
    /// Whether `h2` holds a connection, for readers that find it locked (`/metrics`).
    h2_held: AtomicBool,
}

struct Idle {
    conn: H1Conn,
    since: Instant,
}

/// Counts a request in flight on an endpoint until dropped.
pub struct InFlight {
    endpoint: Arc<Endpoint>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.endpoint.key.protocol == Protocol::H2c {
            // The shared connection's idle time starts when its last request ends.
            self.endpoint.last_used.store(now_ms(), Ordering::Relaxed);
        }
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Upstreams {
    /// Pools whose connections are closed after `idle_timeout` without a request.
    pub fn new(idle_timeout: Duration) -> Self {
        Upstreams {
            endpoints: Mutex::default(),
            idle_timeout,
        }
    }

    /// How long a connection with no request on it is kept.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The state of one endpoint, created on first use. `tls` must be the profile whose
    /// identity is `key.tls`.
    pub fn endpoint(&self, key: PoolKey, tls: Option<&Arc<ProfileTls>>) -> Arc<Endpoint> {
        endpoint_in(&mut lock(&self.endpoints), key, tls, self.idle_timeout)
    }

    /// Power of two choices: of two endpoints drawn at random, the one with fewer requests
    /// in flight on this worker. `None` when there is no endpoint. With `tls`, the
    /// endpoints' connections are TLS under that profile (pools of their own).
    pub fn pick(
        &self,
        addrs: &[SocketAddr],
        protocol: Protocol,
        tls: Option<&Arc<ProfileTls>>,
    ) -> Option<Arc<Endpoint>> {
        let identity = tls.map(|t| t.identity());
        let key = |addr: SocketAddr| PoolKey {
            addr,
            protocol,
            tls: identity,
        };
        match addrs.len() {
            0 => None,
            1 => Some(self.endpoint(key(addrs[0]), tls)),
            n => {
                let i = fastrand::usize(..n);
                let mut j = fastrand::usize(..n - 1);
                if j >= i {
                    j += 1;
                }
                let mut map = lock(&self.endpoints);
                let mut get = |addr| endpoint_in(&mut map, key(addr), tls, self.idle_timeout);
                let a = get(addrs[i]);
                let b = get(addrs[j]);
                if b.in_flight() < a.in_flight() {
                    Some(b)
                } else {
                    Some(a)
                }
            }
        }
    }

    /// Closes connections idle for the idle timeout (HTTP/1.1 ones in the pool, and the
    /// shared HTTP/2 connection once no request has used it for that long) and forgets
    /// endpoints unused for long.
    pub fn sweep(&self) {
        let now = Instant::now();
        let now_ms = now_ms();
        let ttl = u64::try_from(ENDPOINT_TTL.as_millis()).unwrap_or(u64::MAX);
        let idle_ms = u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut map = lock(&self.endpoints);
        map.retain(|_, e| {
            lock(&e.idle).retain_mut(|i| {
                now.duration_since(i.since) < self.idle_timeout && i.conn.is_open()
            });
            let idle_empty = lock(&e.idle).is_empty();
            let quiet = now_ms.saturating_sub(e.last_used.load(Ordering::Relaxed));
            let h2_empty =
                e.h2.try_lock()
                    .map(|mut g| {
                        if e.in_flight() == 0 && quiet >= idle_ms {
                            // Dropping the last sender lets hyper close the connection.
                            *g = None;
                            e.h2_held.store(false, Ordering::Relaxed);
                        }
                        g.is_none()
                    })
                    .unwrap_or(false);
            let unused = now_ms.saturating_sub(e.last_used.load(Ordering::Relaxed)) > ttl;
            !(idle_empty && h2_empty && e.in_flight() == 0 && unused)
        });
    }

    /// Retires the pools of TLS profiles that `configs` no longer serve (their roots,
    /// names or client certificate changed, or the policy is gone): idle connections are
    /// closed and the shared HTTP/2 connection dropped now; requests in flight on them
    /// finish, and their connections are closed instead of pooled. New requests already
    /// use pools keyed by the new identities.
    pub fn retire_stale_tls(&self, configs: &BackendTlsConfigs) {
        let mut map = lock(&self.endpoints);
        map.retain(|key, e| {
            let keep = key.tls.is_none_or(|id| configs.is_current(id));
            if !keep {
                e.retired.store(true, Ordering::Relaxed);
                lock(&e.idle).clear();
                if let Ok(mut h2) = e.h2.try_lock() {
                    *h2 = None;
                    e.h2_held.store(false, Ordering::Relaxed);
                }
                debug!(endpoint = %key.addr, "retired backend TLS pool of a changed profile");
            }
            keep
        });
    }

    /// Idle HTTP/1.1 connections held (`/metrics`).
    pub fn idle_connections(&self) -> usize {
        lock(&self.endpoints)
            .values()
            .map(|e| lock(&e.idle).len())
            .sum()
    }

    /// Shared HTTP/2 connections held, open or idle (`/metrics`).
    pub fn h2_connections(&self) -> usize {
        lock(&self.endpoints)
            .values()
            .filter(|e| {
                e.h2.try_lock()
                    .map(|g| g.as_ref().is_some_and(|tx| !tx.is_closed()))
                    .unwrap_or_else(|_| e.h2_held.load(Ordering::Relaxed))
            })
            .count()
    }
}

/// The endpoint of `key` in `map`, created on first use (`tls`: the profile whose
/// identity is `key.tls`).
fn endpoint_in(
    map: &mut HashMap<PoolKey, Arc<Endpoint>>,
    key: PoolKey,
    tls: Option<&Arc<ProfileTls>>,
    idle_timeout: Duration,
) -> Arc<Endpoint> {
    map.entry(key)
        .or_insert_with(|| Arc::new(Endpoint::new(key, tls.cloned(), idle_timeout)))
        .clone()
}

/// TCP to a backend endpoint within [`CONNECT_TIMEOUT`], without Nagle (small requests
/// and responses never wait).
pub async fn connect_tcp(addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Err(_) => return Err(UpstreamError::ConnectTimeout { addr }),
        Ok(Err(source)) => return Err(UpstreamError::connect(addr, source)),
        Ok(Ok(stream)) => stream,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A connection to a backend endpoint: TCP, then TLS under `tls` when the backend has a
/// BackendTLSPolicy (that profile's config and the endpoint's session store, offering
/// `alpn`). A failed handshake or verification is an error, logged with the check that
/// failed, never a plain connection.
pub async fn connect(
    addr: SocketAddr,
    tls: Option<&ProfileTls>,
    alpn: Alpn,
) -> Result<BackendIo, UpstreamError> {
    let tcp = connect_tcp(addr).await?;
    let Some(profile) = tls else {
        return Ok(BackendIo::Plain(tcp));
    };
    match profile
        .connect(tcp, Some(addr), alpn, backend_tls::HANDSHAKE_TIMEOUT)
        .await
    {
        Ok(stream) => Ok(BackendIo::Tls(Box::new(stream))),
        Err(source) => {
            tracing::warn!(
                endpoint = %addr,
                sni = ?profile.server_name(),
                error = %source,
                "backend TLS failed"
            );
            Err(UpstreamError::Tls {
                addr,
                source: Box::new(source),
            })
        }
    }
}

impl Endpoint {
    fn new(key: PoolKey, tls: Option<Arc<ProfileTls>>, idle_timeout: Duration) -> Self {
        debug_assert_eq!(key.tls, tls.as_ref().map(|t| t.identity()));
        Endpoint {
            key,
            tls,
            retired: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_used: AtomicU64::new(now_ms()),
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            h2: tokio::sync::Mutex::new(None),
            h2_held: AtomicBool::new(false),
        }
    }

    /// Its pool key.
    pub fn key(&self) -> PoolKey {
        self.key
    }

    /// Requests in flight on this endpoint from this worker.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
        }
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<H1Conn> {
        let mut idle = lock(&self.idle);
        while let Some(mut i) = idle.pop() {
            if i.since.elapsed() < self.idle_timeout && i.conn.is_open() {
                return Some(i.conn);
            }
        }
        None
    }

    fn checkin(&self, conn: H1Conn) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// A connection for `alpn`: TCP, then TLS under the endpoint's profile when it has
    /// one (see [`connect`]).
    async fn connect_io(&self, alpn: Alpn) -> Result<BackendIo, UpstreamError> {
        connect(self.key.addr, self.tls.as_deref(), alpn).await
    }

    /// A hyper HTTP/1.1 connection for an `Upgrade` request (hyper hands over the upgraded
    /// stream after a 101).
    async fn connect_upgrade(&self) -> Result<http1::SendRequest<ReqBody>, UpstreamError> {
        let stream = self.connect_io(Alpn::Http1).await?;
        let addr = self.key.addr;
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(err) = conn.with_upgrades().await {
                debug!(%addr, error = %err, "backend connection ended");
            }
        });
        Ok(tx)
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<ReqBody>, UpstreamError> {
        let stream = self.connect_io(Protocol::H2c.alpn()).await?;
        let addr = self.key.addr;
        if let BackendIo::Tls(tls) = &stream {
            if backend_tls::negotiated(tls) != Negotiated::H2 {
                tracing::warn!(endpoint = %addr, "backend TLS: h2 offered and not chosen by ALPN");
                return Err(UpstreamError::NoH2 { addr });
            }
        }
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                debug!(%addr, error = %err, "backend h2 connection ended");
            }
        });
        Ok(tx)
    }

    /// Sends a request and returns the response head with its body. A request that a
    /// pooled connection did not take (it was closing) goes on another connection; an
    /// error after the request was handed to a connection is returned (the caller decides
    /// whether retrying is safe).
    ///
    /// A plain function returning the protocol's own future: an async layer here would
    /// keep a second copy of the request in the request's future.
    pub fn send(
        self: &Arc<Self>,
        req: Request<ReqBody>,
        guard: InFlight,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + use<> {
        self.last_used.store(now_ms(), Ordering::Relaxed);
        let this = self.clone();
        match self.key.protocol {
            Protocol::Http1 => Either::Left(Self::send_h1(this, req, guard)),
            Protocol::H2c => Either::Right(Self::send_h2(this, req, guard)),
        }
    }

    async fn send_h1(
        self: Arc<Self>,
        mut req: Request<ReqBody>,
        guard: InFlight,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let addr = self.key.addr;
        crate::phase::turn(crate::phase::Side::Backend).await;
        let exchange = loop {
            if let Some(conn) = self.checkout() {
                match conn.start(req, &self) {
                    Ok(exchange) => break exchange,
                    // Not written: the connection was closing. Try another one.
                    Err(not_sent) => req = not_sent.req,
                }
            } else {
                // Boxed: connecting is rare next to reuse, and its future would otherwise
                // size the future of every request.
                let conn = H1Conn::new(Box::pin(self.connect_io(Protocol::Http1.alpn())).await?);
                match conn.start(req, &self) {
                    Ok(exchange) => break exchange,
                    Err(not_sent) => {
                        return Err(UpstreamError::Reset {
                            addr,
                            source: not_sent.error.into(),
                        })
                    }
                }
            }
        };
        match exchange.await {
            Ok(resp) => Ok(resp.map(|body| UpstreamBody::h1(body, guard))),
            Err(source) => Err(UpstreamError::Reset {
                addr,
                source: source.into(),
            }),
        }
    }

    async fn send_h2(
        self: Arc<Self>,
        req: Request<ReqBody>,
        guard: InFlight,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let addr = self.key.addr;
        let mut tx = {
            let mut slot = self.h2.lock().await;
            match slot.as_ref() {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    // Boxed: a handshake is rare, and its future would otherwise size
                    // the future of every request.
                    let tx = Box::pin(self.connect_h2()).await?;
                    *slot = Some(tx.clone());
                    self.h2_held.store(true, Ordering::Relaxed);
                    tx
                }
            }
        };
        if let Err(source) = tx.ready().await {
            return Err(UpstreamError::Reset {
                addr,
                source: source.into(),
            });
        }
        match tx.send_request(req).await {
            Ok(resp) => Ok(resp.map(|body| UpstreamBody::hyper(body, guard))),
            Err(source) => Err(UpstreamError::Reset {
                addr,
                source: source.into(),
            }),
        }
    }

    /// Sends an `Upgrade` request on a connection of its own (never pooled: after a 101 it
    /// carries the upgraded protocol).
    pub async fn send_upgrade(
        self: &Arc<Self>,
        req: Request<ReqBody>,
        guard: InFlight,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let addr = self.key.addr;
        let mut tx = Box::pin(self.connect_upgrade()).await?;
        match tx.send_request(req).await {
            Ok(resp) => Ok(resp.map(|body| UpstreamBody::hyper(body, guard))),
            Err(source) => Err(UpstreamError::Reset {
                addr,
                source: source.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_of_two_choices_prefers_the_endpoint_with_fewer_requests_in_flight() {
        let ups = Upstreams::default();
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let busy = ups.endpoint(
            PoolKey {
                addr: a,
                protocol: Protocol::Http1,
                tls: None,
            },
            None,
        );
        let _guards: Vec<InFlight> = (0..5).map(|_| busy.begin()).collect();
        for _ in 0..50 {
            let picked = ups
                .pick(&[a, b], Protocol::Http1, None)
                .expect("an endpoint");
            assert_eq!(picked.key().addr, b);
        }
    }

    #[test]
    fn in_flight_counts_drop_with_their_guard() {
        let ups = Upstreams::default();
        let e = ups.endpoint(
            PoolKey {
                addr: "127.0.0.1:3".parse().expect("addr"),
                protocol: Protocol::H2c,
                tls: None,
            },
            None,
        );
        let g = e.begin();
        assert_eq!(e.in_flight(), 1);
        drop(g);
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn no_endpoint_picks_nothing() {
        assert!(Upstreams::default()
            .pick(&[], Protocol::Http1, None)
            .is_none());
    }
}
