//! Test backends, run in-process on ephemeral 127.0.0.1 ports.
//!
//! [`Echo`] answers like the Gateway API conformance suite's echo backend: JSON with the
//! request's path (with query), host, method, protocol, headers, its own identity (`pod`)
//! and the TLS details it saw (`tls`, null on plain connections). It serves HTTP/1.1 and
//! h2c (prior knowledge), gRPC (any method; the JSON travels in one gRPC message, the
//! backend's name also in the `x-echo-backend` header), and `Upgrade` (101, then echoes
//! bytes). Knobs: `/status/NNN` answers NNN; `?delay=1s` (or `500ms`) waits first;
//! `X-Echo-Set-Header: Name: value,Other: value` sets response headers; and the
//! conformance retry simulation `?responseCode=500&succeedAfter=2&uuid=U` answers
//! `responseCode` to the first `succeedAfter` requests carrying `uuid`.
//!
//! [`Echo::start_tls`] serves the same over TLS (HTTP/1.1 or h2 by ALPN) and fills `tls`
//! with what it saw of the connection: the SNI (`serverName`), the ALPN
//! (`negotiatedProtocol`), whether the handshake was `Full` or `Resumed` (`handshakeKind`)
//! and the client certificate's SHA-256 (`clientCertificate`, null without one): the
//! backend of a passthrough route or of a BackendTLSPolicy. [`Echo::start_tls_with`] can
//! require client certificates and refuse resumption.
//!
//! [`TcpEcho`] speaks a line protocol over plain TCP or TLS (told apart by the first
//! byte), reporting per line whether the bytes arrived encrypted and which SNI they
//! carried, and on the client's half-close how many bytes it got: the backend of
//! TLSRoutes, terminated or passed through.
//!
//! [`RawBackend`] misbehaves on purpose: it dies in the middle of a response body, or
//! resets the connection before answering.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, header, service::service_fn, Request, Response, StatusCode};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpListener,
};
use tokio_rustls::TlsAcceptor;

use crate::tls::{sha256_hex, Leaf, ServerOptions};

/// The runtime every in-process backend and test client runs on.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-backends")
            .enable_all()
            .build()
            .expect("invariant: the test runtime starts")
    })
}

/// What an echo backend recorded of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub version: String,
    /// The Host header, if the request had one.
    pub host: Option<String>,
    /// The request target as received (absolute form included).
    pub target: String,
    /// The body's length, once read to its end; `None` when it ended in an error.
    pub body: Option<usize>,
}

/// An echo backend.
pub struct Echo {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its identity, reported as `pod`.
    pub name: String,
    connections: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    state: Arc<EchoState>,
    task: tokio::task::JoinHandle<()>,
}

struct EchoState {
    name: String,
    requests: AtomicUsize,
    /// Every request, in arrival order.
    seen: Mutex<Vec<Seen>>,
    retries: Mutex<HashMap<String, u32>>,
}

impl Echo {
    /// Starts an echo backend named `name`.
    pub fn start(name: &str) -> Echo {
        Self::start_with(name, None)
    }

    /// Starts an echo backend named `name` that speaks TLS only, with `cert` (ALPN h2,
    /// http/1.1); its answers carry the SNI and ALPN it saw.
    pub fn start_tls(name: &str, cert: &Leaf) -> Echo {
        Self::start_tls_with(name, cert, &ServerOptions::default())
    }

    /// [`Echo::start_tls`] with `options` (client certificates, resumption); ALPN `h2`,
    /// `http/1.1` when `options.alpn` is empty.
    pub fn start_tls_with(name: &str, cert: &Leaf, options: &ServerOptions<'_>) -> Echo {
        let mut options = options.clone();
        if options.alpn.is_empty() {
            options.alpn = vec![b"h2", b"http/1.1"];
        }
        Self::start_with(
            name,
            Some(TlsAcceptor::from(cert.server_config_with(&options))),
        )
    }

    fn start_with(name: &str, tls: Option<TlsAcceptor>) -> Echo {
        let rt = runtime();
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("invariant: loopback has free ports");
        let addr = listener.local_addr().expect("invariant: bound socket");
        let state = Arc::new(EchoState {
            name: name.to_string(),
            requests: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            retries: Mutex::new(HashMap::new()),
        });
        let served = state.clone();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let open = Arc::new(AtomicUsize::new(0));
        let open_now = open.clone();
        let task = rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let state = state.clone();
                let tls = tls.clone();
                let open = OpenConnection::new(open_now.clone());
                tokio::spawn(async move {
                    let _open = open;
                    match tls {
                        None => serve_echo(stream, state, None).await,
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let (_, session) = stream.get_ref();
                            let seen = serde_json::json!({
                                "serverName": session.server_name(),
                                "negotiatedProtocol": session
                                    .alpn_protocol()
                                    .map(|p| String::from_utf8_lossy(p).into_owned()),
                                "handshakeKind": session
                                    .handshake_kind()
                                    .map(|k| format!("{k:?}")),
                                "clientCertificate": session
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .map(|c| sha256_hex(c.as_ref())),
                            });
                            serve_echo(stream, state, Some(Arc::new(seen))).await;
                        }
                    }
                });
            }
        });
        Echo {
            addr,
            name: name.to_string(),
            connections,
            open,
            state: served,
            task,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// TCP connections open now (accepted and not yet closed by either side).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Every request so far, in the order their bodies ended.
    pub fn seen(&self) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_echo<S>(stream: S, state: Arc<EchoState>, tls: Option<Arc<serde_json::Value>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = state.clone();
        let tls = tls.clone();
        async move { Ok::<_, Infallible>(answer(&state, req, tls.as_deref()).await) }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
}

fn parse_delay(v: &str) -> Option<Duration> {
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    v.strip_suffix('s')
        .and_then(|s| s.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
}

fn query_params(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

async fn answer(
    state: &EchoState,
    req: Request<Incoming>,
    tls: Option<&serde_json::Value>,
) -> Response<Full<Bytes>> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let mut record = Seen {
        version: format!("{:?}", req.version()),
        host: req
            .headers()
            .get(header::HOST)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        target: req.uri().to_string(),
        body: None,
    };
    let query = query_params(req.uri().query().unwrap_or(""));
    if let Some(delay) = query.get("delay").and_then(|d| parse_delay(d)) {
        tokio::time::sleep(delay).await;
    }
    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let values: Vec<serde_json::Value> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned().into())
            .collect();
        headers.insert(name.as_str().to_string(), values.into());
    }
    let host = req
        .headers()
        .get(header::HOST)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let path = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_default();
    let json = serde_json::json!({
        "path": path,
        "host": host,
        "method": req.method().as_str(),
        "proto": format!("{:?}", req.version()),
        "headers": headers,
        "namespace": "gateway-conformance-infra",
        "ingress": "",
        "service": "",
        "pod": state.name,
        "tls": tls,
    });

    let mut status = StatusCode::OK;
    if let Some(code) = req.uri().path().strip_prefix("/status/") {
        status = code
            .parse()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
    }
    if let (Some(code), Some(after), Some(uuid)) = (
        query.get("responseCode"),
        query.get("succeedAfter"),
        query.get("uuid"),
    ) {
        let seen = {
            let mut retries = state
                .retries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = retries.entry(uuid.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if seen <= after.parse().unwrap_or(0) {
            status = code
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        }
    }
    let set_headers: Vec<(String, String)> = req
        .headers()
        .get_all("x-echo-set-header")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|kv| kv.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();

    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let upgrade = req.headers().contains_key(header::UPGRADE);
    let mut req = req;
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    // Read the request body to the end (gRPC messages, POST bodies).
    let body = req.into_body().collect().await.map(|b| b.to_bytes().len());
    record.body = body.as_ref().ok().copied();
    if let Ok(mut all) = state.seen.lock() {
        all.push(record);
    }
    let body_len = body.unwrap_or(0);
    let mut json = json;
    json["bodyLength"] = body_len.into();

    let mut resp = if grpc {
        let payload = serde_json::to_vec(&json).unwrap_or_default();
        let mut framed = Vec::with_capacity(payload.len() + 5);
        framed.push(0);
        framed.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(0).to_be_bytes());
        framed.extend_from_slice(&payload);
        let mut resp = Response::new(Full::new(Bytes::from(framed)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/grpc"),
        );
        // Trailers-only would need a body type with trailers; grpc-status in the head is
        // what the tests read.
        resp.headers_mut()
            .insert("grpc-status", header::HeaderValue::from_static("0"));
        resp
    } else if let Some(on_upgrade) = on_upgrade {
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert(
            header::UPGRADE,
            header::HeaderValue::from_static("websocket"),
        );
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("upgrade"),
        );
        return resp;
    } else {
        let mut resp = Response::new(Full::new(Bytes::from(
            serde_json::to_vec(&json).unwrap_or_default(),
        )));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        resp
    };
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(&state.name) {
        resp.headers_mut().insert("x-echo-backend", v);
    }
    for (k, v) in set_headers {
        if let (Ok(k), Ok(v)) = (
            header::HeaderName::from_bytes(k.as_bytes()),
            header::HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

/// A line-protocol backend for TLSRoutes. Per line received it answers one JSON line
/// `{"pod", "tls", "serverName", "line"}` (`tls`: the bytes arrived as TLS, which it
/// terminated; `serverName`: the SNI then); when the client half-closes, it answers
/// `{"pod", "eof": true, "bytes": N}` and closes its side.
pub struct TcpEcho {
    /// Where it listens.
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpEcho {
    /// Starts it; with `cert`, a connection whose first byte is a TLS handshake record
    /// is terminated with that certificate, any other is served in plaintext.
    pub fn start(name: &str, cert: Option<&Leaf>) -> TcpEcho {
        let rt = runtime();
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("invariant: loopback has free ports");
        let addr = listener.local_addr().expect("invariant: bound socket");
        let acceptor = cert.map(|c| TlsAcceptor::from(c.server_config(&[])));
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let name = name.to_string();
        let task = rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let acceptor = acceptor.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    let tls = matches!(stream.peek(&mut first).await, Ok(1) if first[0] == 22);
                    match acceptor {
                        Some(acceptor) if tls => {
                            let Ok(s) = acceptor.accept(stream).await else {
                                return;
                            };
                            let sni = s.get_ref().1.server_name().map(str::to_string);
                            tcp_echo_lines(s, &name, true, sni).await;
                        }
                        _ => tcp_echo_lines(stream, &name, false, None).await,
                    }
                });
            }
        });
        TcpEcho {
            addr,
            connections,
            task,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tcp_echo_lines<S>(stream: S, name: &str, tls: bool, sni: Option<String>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut read = tokio::io::BufReader::new(read);
    let mut bytes = 0usize;
    let mut line = Vec::new();
    loop {
        line.clear();
        match read.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes += n,
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let answer = serde_json::json!({
            "pod": name, "tls": tls, "serverName": sni, "line": text,
        });
        if write
            .write_all(format!("{answer}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
    let answer = serde_json::json!({"pod": name, "eof": true, "bytes": bytes});
    let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
    let _ = write.shutdown().await;
}

/// How a [`RawBackend`] misbehaves.
#[derive(Clone, Copy, Debug)]
pub enum Misbehaviour {
    /// `Content-Length: 100000`, 1000 bytes of body, then the connection closes.
    DieMidBodyWithLength,
    /// Chunked, one 1000-byte chunk, then the connection closes without the last chunk.
    DieMidBodyChunked,
    /// Reads the request, then resets the connection without answering.
    ResetBeforeResponse,
    /// Reads the request and never answers; the connection stays open until the backend
    /// is dropped (a mirror or backend that hangs).
    NeverAnswer,
    /// `Content-Length: 100000` and 1000 bytes of body, then nothing more while the
    /// connection stays open (a backend stalled mid-body).
    StallAfterHead,
    /// A whole chunked body of 10 bytes (`0123456789`) under a `Content-Length: 3` that
    /// chunked overrides; the connection stays open.
    ChunkedWithLength,
}

/// A backend that breaks its responses.
pub struct RawBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    /// Starts a backend that misbehaves as `how` on every request.
    pub fn start(how: Misbehaviour) -> RawBackend {
        let rt = runtime();
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("invariant: loopback has free ports");
        let addr = listener.local_addr().expect("invariant: bound socket");
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = rt.spawn(async move {
            let mut hanging = Vec::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                let conn = tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let filler = vec![b'x'; 1000];
                    if matches!(how, Misbehaviour::StallAfterHead) {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
                            .await;
                        let _ = stream.write_all(&filler).await;
                    }
                    if matches!(how, Misbehaviour::ChunkedWithLength) {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n")
                            .await;
                    }
                    if matches!(
                        how,
                        Misbehaviour::NeverAnswer
                            | Misbehaviour::StallAfterHead
                            | Misbehaviour::ChunkedWithLength
                    ) {
                        // Read whatever else comes, send nothing more, until the peer closes.
                        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                        return;
                    }
                    match how {
                        Misbehaviour::DieMidBodyWithLength => {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
                                .await;
                            let _ = stream.write_all(&filler).await;
                        }
                        Misbehaviour::DieMidBodyChunked => {
                            let _ = stream
                                .write_all(
                                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3e8\r\n",
                                )
                                .await;
                            let _ = stream.write_all(&filler).await;
                            let _ = stream.write_all(b"\r\n").await;
                        }
                        Misbehaviour::ResetBeforeResponse
                        | Misbehaviour::NeverAnswer
                        | Misbehaviour::StallAfterHead
                        | Misbehaviour::ChunkedWithLength => {}
                    }
                    let _ = stream.flush().await;
                    // Linger 0: close with RST, like a crashed process's socket.
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    drop(stream);
                });
                // Connections end with the backend: aborting this task drops `hanging`.
                hanging.retain(|c: &AbortOnDrop| !c.0.is_finished());
                hanging.push(AbortOnDrop(conn));
            }
        });
        RawBackend {
            addr,
            requests,
            task,
        }
    }

    /// Request heads it has read so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Counts a connection as open until dropped.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        OpenConnection(open)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection task that ends when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
