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
/// HTTP/1.1 connections open (idle or in use) per endpoint and worker, by default
/// (`--backend-max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// How long a request waits for a connection of an endpoint at its limit (then 503).
pub const POOL_WAIT: Duration = Duration::from_secs(5);
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
    limits: PoolLimits,
    stats: Arc<PoolStats>,
}

/// What one worker's pools count for `/metrics`.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Requests that waited for a connection at an endpoint's limit.
    pub waited: AtomicU64,
    /// Requests that waited in vain and got 503.
    pub overflowed: AtomicU64,
}

/// What bounds the pools of a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolLimits {
    /// How long a connection with no request on it is kept.
    pub idle_timeout: Duration,
    /// HTTP/1.1 connections open at once per endpoint, idle or in use.
    pub max_connections: usize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl Default for Upstreams {
    fn default() -> Self {
        Upstreams::new(PoolLimits::default())
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
    /// Its HTTP/1.1 connections under the limit.
    slots: Arc<Slots>,
    /// Its worker's counters.
    stats: Arc<PoolStats>,
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

/// The HTTP/1.1 connections of one endpoint (and worker) against their limit, and the
/// requests waiting for one.
pub(crate) struct Slots {
    open: AtomicUsize,
    waiting: AtomicUsize,
    freed: tokio::sync::Notify,
    max: usize,
}

impl Slots {
    fn new(max: usize) -> Self {
        Slots {
            open: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: tokio::sync::Notify::new(),
            max: max.max(1),
        }
    }

    /// A place for one more connection, unless the limit is reached.
    fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let mut open = self.open.load(Ordering::SeqCst);
        loop {
            if open >= self.max {
                return None;
            }
            match self.open.compare_exchange_weak(
                open,
                open + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Some(Slot(self.clone())),
                Err(now) => open = now,
            }
        }
    }

    /// A connection came back to the pool or closed: the first waiting request may go.
    fn wake_one(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_one();
        }
    }
}

/// One open HTTP/1.1 connection's place under its endpoint's limit, given back when the
/// connection closes.
pub(crate) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.wake_one();
    }
}

/// Counts a request waiting for a connection until dropped.
struct Waiting<'a>(&'a Slots);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
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
    /// Pools bounded by `limits`.
    pub fn new(limits: PoolLimits) -> Self {
        Upstreams {
            endpoints: Mutex::default(),
            limits,
            stats: Arc::default(),
        }
    }

    /// Waits for and overflows of connection limits so far.
    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// How long a connection with no request on it is kept.
    pub fn idle_timeout(&self) -> Duration {
        self.limits.idle_timeout
    }

    /// The state of one endpoint, created on first use. `tls` must be the profile whose
    /// identity is `key.tls`.
    pub fn endpoint(&self, key: PoolKey, tls: Option<&Arc<ProfileTls>>) -> Arc<Endpoint> {
        endpoint_in(
            &mut lock(&self.endpoints),
            key,
            tls,
            self.limits,
            &self.stats,
        )
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
                let mut get =
                    |addr| endpoint_in(&mut map, key(addr), tls, self.limits, &self.stats);
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
        let idle_timeout = self.limits.idle_timeout;
        let idle_ms = u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut map = lock(&self.endpoints);
        map.retain(|_, e| {
            lock(&e.idle)
                .retain_mut(|i| now.duration_since(i.since) < idle_timeout && i.conn.is_open());
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
            let unused = quiet > ttl;
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
                // Requests waiting for one of its connections give up now (`Retired`).
                e.slots.freed.notify_waiters();
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
    limits: PoolLimits,
    stats: &Arc<PoolStats>,
) -> Arc<Endpoint> {
    map.entry(key)
        .or_insert_with(|| Arc::new(Endpoint::new(key, tls.cloned(), limits, stats.clone())))
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
    fn new(
        key: PoolKey,
        tls: Option<Arc<ProfileTls>>,
        limits: PoolLimits,
        stats: Arc<PoolStats>,
    ) -> Self {
        debug_assert_eq!(key.tls, tls.as_ref().map(|t| t.identity()));
        Endpoint {
            key,
            tls,
            retired: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_used: AtomicU64::new(now_ms()),
            idle_timeout: limits.idle_timeout,
            slots: Arc::new(Slots::new(limits.max_connections)),
            stats,
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
            drop(idle);
            self.slots.wake_one();
        }
    }

    /// Waits, at an endpoint at its connection limit, until a connection comes back to the
    /// pool or closes (`Ok`; the caller looks again), or until `deadline` (`PoolFull`).
    async fn wait_for_connection(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<(), UpstreamError> {
        self.slots.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.slots);
        let freed = self.slots.freed.notified();
        tokio::pin!(freed);
        // Registered before looking again, so that a connection given back in between
        // still wakes this request.
        freed.as_mut().enable();
        if !lock(&self.idle).is_empty() || self.slots.open.load(Ordering::SeqCst) < self.slots.max {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, freed).await {
            Ok(()) => Ok(()),
            Err(_) => Err(UpstreamError::PoolFull {
                addr: self.key.addr,
                max: self.slots.max,
            }),
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
        let mut deadline = None;
        let exchange = loop {
            if let Some(conn) = self.checkout() {
                match conn.start(req, &self) {
                    Ok(exchange) => break exchange,
                    // Not written: the connection was closing. Try another one.
                    Err(not_sent) => req = not_sent.req,
                }
            } else if let Some(slot) = self.slots.try_take() {
                // Boxed: connecting is rare next to reuse, and its future would otherwise
                // size the future of every request.
                let io = Box::pin(self.connect_io(Protocol::Http1.alpn())).await?;
                let conn = H1Conn::new(io, slot);
                match conn.start(req, &self) {
                    Ok(exchange) => break exchange,
                    Err(not_sent) => {
                        return Err(UpstreamError::Reset {
                            addr,
                            source: not_sent.error.into(),
                        })
                    }
                }
            } else {
                // At the limit with none idle: wait for one to come back or close.
                let at = match deadline {
                    Some(at) => at,
                    None => {
                        // The first wait of this request: counted once, timed from here.
                        self.stats.waited.fetch_add(1, Ordering::Relaxed);
                        *deadline.insert(tokio::time::Instant::now() + POOL_WAIT)
                    }
                };
                if let Err(e) = Box::pin(self.wait_for_connection(at)).await {
                    self.stats.overflowed.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
                if self.retired.load(Ordering::Relaxed) {
                    // Its TLS profile changed while the request waited: no new connection
                    // under the old one.
                    return Err(UpstreamError::Retired { addr });
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
    fn slots_stop_at_the_limit_and_a_closed_connection_frees_one() {
        let slots = Arc::new(Slots::new(2));
        let a = slots.try_take().expect("first");
        let _b = slots.try_take().expect("second");
        assert!(slots.try_take().is_none(), "a third over a limit of 2");
        drop(a);
        assert!(slots.try_take().is_some(), "the closed one's place is free");
        assert!(
            Arc::new(Slots::new(0)).try_take().is_some(),
            "a limit is at least 1"
        );
    }

    fn limited_endpoint(max: usize) -> Arc<Endpoint> {
        let ups = Upstreams::new(PoolLimits {
            max_connections: max,
            ..PoolLimits::default()
        });
        ups.endpoint(
            PoolKey {
                addr: "127.0.0.1:1".parse().expect("addr"),
                protocol: Protocol::Http1,
                tls: None,
            },
            None,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_connection_ends_on_a_close_or_after_the_deadline() {
        let ep = limited_endpoint(1);
        let held = ep.slots.try_take().expect("the one place");
        // Woken by the close, before the deadline.
        let deadline = tokio::time::Instant::now() + POOL_WAIT;
        let waiter = {
            let ep = ep.clone();
            tokio::spawn(async move { ep.wait_for_connection(deadline).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(ep.slots.waiting.load(Ordering::SeqCst), 1);
        drop(held);
        let woken = waiter.await.expect("task");
        assert!(woken.is_ok(), "{woken:?}");
        assert!(tokio::time::Instant::now() < deadline);
        assert_eq!(ep.slots.waiting.load(Ordering::SeqCst), 0);

        // With the place taken for good: PoolFull at the deadline, not before.
        let _held = ep.slots.try_take().expect("free again");
        let start = tokio::time::Instant::now();
        let full = ep.wait_for_connection(start + POOL_WAIT).await;
        assert!(
            matches!(full, Err(UpstreamError::PoolFull { max: 1, .. })),
            "{full:?}"
        );
        assert_eq!(tokio::time::Instant::now() - start, POOL_WAIT);
        assert_eq!(ep.slots.waiting.load(Ordering::SeqCst), 0);

        // A waiter that is cancelled leaves no count behind.
        let cancelled = tokio::time::timeout(
            Duration::from_millis(10),
            ep.wait_for_connection(tokio::time::Instant::now() + POOL_WAIT),
        )
        .await;
        assert!(cancelled.is_err());
        assert_eq!(ep.slots.waiting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_waiting_request_is_woken_when_a_connection_closes() {
        let slots = Arc::new(Slots::new(1));
        let held = slots.try_take().expect("the one place");
        slots.waiting.fetch_add(1, Ordering::SeqCst);
        let freed = slots.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), freed)
            .await
            .expect("woken by the close");
        slots.waiting.fetch_sub(1, Ordering::SeqCst);
        assert!(slots.try_take().is_some());
    }

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
