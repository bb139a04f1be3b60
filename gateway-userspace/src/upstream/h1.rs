//! HTTP/1.1 to a backend, driven in the caller's task.
//!
//! hyper's client runs every backend connection as a task of its own and hands requests
//! and responses to it through a channel: two task switches and a channel round trip per
//! request. Here the request is written and the response read by whoever polls the
//! exchange (the client connection's task), and the connection itself is a plain value
//! that waits in the pool between requests. Nothing is spawned per connection.
//!
//! What a response looks like on the wire follows RFC 9112 §6.3: no body for HEAD, 1xx,
//! 204 and 304; `Transfer-Encoding` ending in `chunked`; else `Content-Length`; else the
//! body runs to the end of the connection (which is then not reused).

use std::{
    future::Future,
    io::{self, IoSlice},
    mem::MaybeUninit,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::{
    header::{self, HeaderMap, HeaderName, HeaderValue},
    http::request,
    Method, Request, Response, StatusCode, Version,
};
use tokio::io::AsyncWrite;

use super::{io::BackendIo, BoxError, Endpoint, ReqBody};

/// Most header fields accepted in a backend's response head.
const MAX_RESPONSE_HEADERS: usize = 128;
/// Largest response head (status line and fields) accepted from a backend.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Longest chunk-size line or trailer section accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// Read buffer: a response head and a small body fit in one read.
const READ_CHUNK: usize = 16 * 1024;
/// Body frames written to the backend in one `writev`.
const MAX_IOVECS: usize = 16;

/// What went wrong on a backend connection.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// A read or write failed.
    #[error("backend connection I/O failed")]
    Io(#[from] io::Error),
    /// The backend closed the connection before the message was complete.
    #[error("the backend closed the connection before the message was complete")]
    Truncated,
    /// The backend's response is not valid HTTP/1.1.
    #[error("invalid response from the backend: {0}")]
    Invalid(&'static str),
    /// The client's request body failed while it was being sent.
    #[error("the request body failed")]
    RequestBody(#[source] BoxError),
}

/// A pooled HTTP/1.1 connection to a backend.
pub(crate) struct H1Conn {
    io: BackendIo,
    /// Its place under the endpoint's connection limit, given back when it closes.
    _slot: super::Slot,
    /// Bytes read and not yet consumed; empty between exchanges.
    rbuf: BytesMut,
    /// The request head, kept to reuse its allocation.
    head: Vec<u8>,
}

/// A request that could not be sent at all: nothing of it reached the connection, so it
/// can go on another one.
pub(crate) struct NotSent {
    pub(crate) req: Request<ReqBody>,
    pub(crate) error: H1Error,
}

/// A request on its way: resolves to the response head (see [`H1Conn::start`]).
pub(crate) struct Exchange {
    /// `None` once the response head is out.
    conn: Option<H1Conn>,
    out: Outgoing,
    head_request: bool,
    pool: Arc<Endpoint>,
}

impl Future for Exchange {
    type Output = Result<Response<H1Body>, H1Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(Err(H1Error::Invalid("exchange polled after its response")));
        };
        if !this.out.done {
            match this.out.poll(cx, conn) {
                Poll::Ready(Ok(())) => this.out.done = true,
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {}
            }
        }
        let head = match ready!(conn.poll_head(cx)) {
            Ok(head) => head,
            Err(e) => {
                this.conn = None;
                return Poll::Ready(Err(e));
            }
        };
        let Some(conn) = this.conn.take() else {
            return Poll::Ready(Err(H1Error::Invalid("exchange polled after its response")));
        };
        let framing = if this.head_request
            || head.status == StatusCode::NO_CONTENT
            || head.status == StatusCode::NOT_MODIFIED
        {
            Framing::Done
        } else {
            head.framing
        };
        let keep_alive = !head.close && framing != Framing::Eof;
        let rest = if this.out.done {
            None
        } else {
            Some(Box::new(std::mem::replace(&mut this.out, Outgoing::done())))
        };
        let body = H1Body::new(conn, rest, framing, keep_alive, this.pool.clone());
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        Poll::Ready(Ok(resp))
    }
}

impl H1Conn {
    pub(crate) fn new(io: BackendIo, slot: super::Slot) -> Self {
        H1Conn {
            io,
            _slot: slot,
            rbuf: BytesMut::new(),
            head: Vec::with_capacity(512),
        }
    }

    /// `false` when the backend closed the connection (or sent something unasked) while it
    /// was idle. Reads nothing unless the reactor saw the socket become readable.
    pub(crate) fn is_open(&mut self) -> bool {
        self.io.is_open()
    }

    /// Starts sending `req`: encodes its head and writes it if the socket takes it now.
    /// A request of which nothing could be written comes back, to go on another
    /// connection. The returned [`Exchange`] resolves to the response head; its body is read
    /// (and the rest of the request body written) as it is polled, and the connection goes
    /// back to `pool` when both are complete and it can be reused.
    ///
    /// A plain future instead of an `async fn`: this sits on every request's path, and the
    /// state an `async fn` would keep (request, parts and connection, each copied on every
    /// move of the enclosing futures) is several times larger.
    pub(crate) fn start(
        mut self,
        req: Request<ReqBody>,
        pool: &Arc<Endpoint>,
    ) -> Result<Exchange, Box<NotSent>> {
        let (parts, body) = req.into_parts();
        let framing = self.encode_head(&parts, &body);
        let written = match self.io.try_write(&self.head) {
            Ok(n) if n > 0 => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Ok(_) => {
                let req = Request::from_parts(parts, body);
                let error = H1Error::Io(io::ErrorKind::WriteZero.into());
                return Err(Box::new(NotSent { req, error }));
            }
            Err(e) => {
                let req = Request::from_parts(parts, body);
                let error = H1Error::Io(e);
                return Err(Box::new(NotSent { req, error }));
            }
        };
        Ok(Exchange {
            conn: Some(self),
            out: Outgoing {
                head_pos: written,
                queue: Vec::new(),
                body: framing.map(|f| (body, f)),
                done: false,
            },
            head_request: parts.method == Method::HEAD,
            pool: pool.clone(),
        })
    }

    /// Writes the request head into `self.head`; returns how the body is framed (`None`:
    /// no body).
    fn encode_head(&mut self, parts: &request::Parts, body: &ReqBody) -> Option<ReqFraming> {
        let h = &mut self.head;
        h.clear();
        h.extend_from_slice(parts.method.as_str().as_bytes());
        h.push(b' ');
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        h.extend_from_slice(target.as_bytes());
        h.extend_from_slice(b" HTTP/1.1\r\n");
        let mut length = None;
        for (name, value) in &parts.headers {
            if name == header::TRANSFER_ENCODING {
                continue;
            }
            if name == header::CONTENT_LENGTH {
                length = std::str::from_utf8(value.as_bytes())
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok());
            }
            h.extend_from_slice(name.as_str().as_bytes());
            h.extend_from_slice(b": ");
            h.extend_from_slice(value.as_bytes());
            h.extend_from_slice(b"\r\n");
        }
        let framing = if let Some(n) = length {
            (n > 0 || !body.is_end_stream()).then_some(ReqFraming::Length(n))
        } else if body.is_end_stream() {
            None
        } else if let Some(n) = body.size_hint().exact() {
            h.extend_from_slice(b"content-length: ");
            h.extend_from_slice(n.to_string().as_bytes());
            h.extend_from_slice(b"\r\n");
            Some(ReqFraming::Length(n))
        } else {
            h.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Some(ReqFraming::Chunked)
        };
        h.extend_from_slice(b"\r\n");
        framing
    }

    /// Reads until a final (non-1xx) response head is complete.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Head, H1Error>> {
        loop {
            if !self.rbuf.is_empty() {
                match parse_head(&mut self.rbuf)? {
                    Some(head) if head.status.is_informational() => {
                        if head.status == StatusCode::SWITCHING_PROTOCOLS {
                            return Poll::Ready(Err(H1Error::Invalid(
                                "101 to a request that asked for no upgrade",
                            )));
                        }
                        continue;
                    }
                    Some(head) => return Poll::Ready(Ok(head)),
                    None if self.rbuf.len() > MAX_RESPONSE_HEAD => {
                        return Poll::Ready(Err(H1Error::Invalid("response head too large")))
                    }
                    None => {}
                }
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(H1Error::Truncated));
            }
        }
    }

    /// Reads more into `rbuf`; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }
}

/// How a request body is framed towards the backend.
#[derive(Clone, Copy)]
enum ReqFraming {
    /// `Content-Length`: exactly this many bytes remain.
    Length(u64),
    Chunked,
}

/// The request, as far as it is not written yet.
pub(crate) struct Outgoing {
    /// How much of the connection's `head` buffer is written.
    head_pos: usize,
    /// Body bytes (with their chunk framing) waiting to be written, in order.
    queue: Vec<Bytes>,
    body: Option<(ReqBody, ReqFraming)>,
    done: bool,
}

impl Outgoing {
    fn done() -> Self {
        Outgoing {
            head_pos: usize::MAX,
            queue: Vec::new(),
            body: None,
            done: true,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>, conn: &mut H1Conn) -> Poll<Result<(), H1Error>> {
        loop {
            ready!(self.poll_flush(cx, conn))?;
            let Some((body, framing)) = self.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            // Gather what the body has ready now into one write.
            loop {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let Ok(data) = frame.into_data() else {
                            continue; // trailers are not forwarded over HTTP/1.1
                        };
                        if data.is_empty() {
                            continue;
                        }
                        match framing {
                            ReqFraming::Length(left) => {
                                let n = data.len() as u64;
                                if n > *left {
                                    return Poll::Ready(Err(H1Error::RequestBody(
                                        "request body longer than its Content-Length".into(),
                                    )));
                                }
                                *left -= n;
                                self.queue.push(data);
                            }
                            ReqFraming::Chunked => {
                                self.queue
                                    .push(Bytes::from(format!("{:x}\r\n", data.len())));
                                self.queue.push(data);
                                self.queue.push(Bytes::from_static(b"\r\n"));
                            }
                        }
                        if self.queue.len() + 3 > MAX_IOVECS {
                            break;
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(H1Error::RequestBody(e)));
                    }
                    Poll::Ready(None) => {
                        match framing {
                            ReqFraming::Length(0) => {}
                            ReqFraming::Length(_) => {
                                return Poll::Ready(Err(H1Error::RequestBody(
                                    "request body shorter than its Content-Length".into(),
                                )))
                            }
                            ReqFraming::Chunked => {
                                self.queue.push(Bytes::from_static(b"0\r\n\r\n"));
                            }
                        }
                        self.body = None;
                        break;
                    }
                    Poll::Pending => {
                        if self.queue.is_empty() {
                            return Poll::Pending;
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Writes the head and the queued body bytes.
    fn poll_flush(&mut self, cx: &mut Context<'_>, conn: &mut H1Conn) -> Poll<Result<(), H1Error>> {
        loop {
            let head = &conn.head[self.head_pos.min(conn.head.len())..];
            if head.is_empty() && self.queue.is_empty() {
                // Over TLS, records the socket did not take yet wait in the session.
                ready!(Pin::new(&mut conn.io).poll_flush(cx))?;
                return Poll::Ready(Ok(()));
            }
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS + 1];
            let mut n = 0;
            if !head.is_empty() {
                slices[0] = IoSlice::new(head);
                n = 1;
            }
            for b in self.queue.iter().take(MAX_IOVECS) {
                slices[n] = IoSlice::new(b);
                n += 1;
            }
            let mut written = ready!(Pin::new(&mut conn.io).poll_write_vectored(cx, &slices[..n]))?;
            if written == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
            }
            let from_head = written.min(head.len());
            self.head_pos += from_head;
            written -= from_head;
            while written > 0 {
                let Some(front) = self.queue.first_mut() else {
                    break;
                };
                if written >= front.len() {
                    written -= front.len();
                    self.queue.remove(0);
                } else {
                    front.advance(written);
                    written = 0;
                }
            }
        }
    }
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    /// `Connection: close`, or HTTP/1.0 without `Connection: keep-alive`.
    close: bool,
}

/// Parses a response head at the front of `buf` and removes it; `None` when incomplete.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, H1Error> {
    // Where each field lies in `buf` (name start and end, value start and end): the values
    // then share one frozen copy of the head instead of an allocation each.
    let mut spans = [[0usize; 4]; MAX_RESPONSE_HEADERS];
    let (len, code, minor, count) = {
        let mut fields =
            [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(H1Error::Invalid("too many header fields"))
            }
            Err(_) => return Err(H1Error::Invalid("unparsable response head")),
        };
        let base = buf.as_ptr() as usize;
        for (span, f) in spans.iter_mut().zip(resp.headers.iter()) {
            let name = f.name.as_ptr() as usize - base;
            let value = f.value.as_ptr() as usize - base;
            *span = [name, name + f.name.len(), value, value + f.value.len()];
        }
        (len, resp.code, resp.version, resp.headers.len())
    };
    let code = code.ok_or(H1Error::Invalid("no status code"))?;
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Invalid("invalid status"))?;
    let version = if minor == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let mut length: Option<u64> = None;
    let mut te: Option<bool> = None;
    let (mut close_token, mut keep_alive_token) = (false, false);
    for &[ns, ne, vs, ve] in spans.iter().take(count) {
        let name = HeaderName::from_bytes(&head[ns..ne])
            .map_err(|_| H1Error::Invalid("invalid header name"))?;
        let raw = &head[vs..ve];
        if name == header::CONTENT_LENGTH {
            // Digits only (RFC 9110 §8.6): no sign, no other spaces than around it.
            let digits = raw.trim_ascii();
            let n = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or(H1Error::Invalid("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Invalid("conflicting Content-Length"));
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            // Chunked alone frames a body this proxy can pass on; any other coding (gzip,
            // ...) would reach the client undecoded once the hop-by-hop header is gone.
            let chunked_only = raw
                .split(|&b| b == b',')
                .all(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            te = Some(te.unwrap_or(true) && chunked_only);
        } else if name == header::CONNECTION {
            for token in raw.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                close_token |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| H1Error::Invalid("invalid header value"))?;
        headers.append(name, value);
    }
    // `close` wins over `keep-alive`; HTTP/1.0 closes unless it asks to keep alive.
    let mut close = close_token || (version == Version::HTTP_10 && !keep_alive_token);
    // RFC 9112 §6.1, §6.3: Transfer-Encoding overrides Content-Length. A coding other
    // than chunked last cannot be passed on (the header is hop-by-hop, and HTTP/2 has
    // none), so such a response is refused. With both headers, or chunked from an
    // HTTP/1.0 server, the framing is suspect: Content-Length is not passed on and the
    // connection is not reused.
    let framing = match (te, length) {
        (Some(false), _) => return Err(H1Error::Invalid("transfer coding other than chunked")),
        (Some(true), l) => {
            if l.is_some() || version == Version::HTTP_10 {
                headers.remove(header::CONTENT_LENGTH);
                close = true;
            }
            Framing::Chunked(Chunk::Size)
        }
        (None, None) => Framing::Eof,
        (None, Some(0)) => Framing::Done,
        (None, Some(n)) => Framing::Length(n),
    };
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
        close,
    }))
}

/// How the rest of a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// This many bytes remain.
    Length(u64),
    Chunked(Chunk),
    /// The body ends with the connection.
    Eof,
    Done,
}

/// Where a chunked body decoder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields up to an empty line (this many bytes of
    /// them read so far).
    Trailers(usize),
}

/// A backend's response body, read from the connection as it is polled. The connection
/// goes back to its pool when the exchange ended cleanly and both sides allow reuse.
pub(crate) struct H1Body {
    conn: Option<H1Conn>,
    /// The rest of the request, when the backend answered before all of it was sent.
    rest: Option<Box<Outgoing>>,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<Endpoint>,
    /// A failure held back for one poll (see [`H1Body::fail`]).
    failed: Option<H1Error>,
}

impl H1Body {
    fn new(
        conn: H1Conn,
        rest: Option<Box<Outgoing>>,
        framing: Framing,
        keep_alive: bool,
        pool: Arc<Endpoint>,
    ) -> Self {
        let mut body = H1Body {
            conn: Some(conn),
            rest,
            framing,
            keep_alive,
            pool,
            failed: None,
        };
        // A body that is already complete (HEAD, 204, 304, Content-Length: 0) may never
        // be polled: the exchange may be over now.
        if body.framing == Framing::Done {
            body.finish();
        }
        body
    }

    /// The response is complete: give the connection back if it can carry another
    /// exchange.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(conn) = self.conn.take() {
            // Not reused: a request not sent in full (the backend answered early), a
            // backend that asked to close, or bytes beyond the response.
            if self.rest.is_none() && self.keep_alive && conn.rbuf.is_empty() {
                self.pool.checkin(conn);
            }
        }
    }

    /// Passes a failure on one poll late: a response head and data frames the client
    /// connection holds in its write buffer are flushed when the body is pending, but
    /// discarded when it fails, and a backend that dies right after its head (the whole
    /// response and the reset arriving together) must still give the client the head
    /// and a truncated body, not a connection closed without a response.
    fn fail(
        &mut self,
        e: H1Error,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.failed = Some(e);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// The next body frame out of `rbuf` (reading more when needed).
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, H1Error>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        loop {
            match &mut self.framing {
                Framing::Done => return Poll::Ready(Ok(None)),
                Framing::Length(left) => {
                    if !conn.rbuf.is_empty() {
                        let n = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(conn.rbuf.len());
                        *left -= n as u64;
                        let data = conn.rbuf.split_to(n).freeze();
                        if *left == 0 {
                            self.framing = Framing::Done;
                        }
                        return Poll::Ready(Ok(Some(data)));
                    }
                }
                Framing::Eof => {
                    if !conn.rbuf.is_empty() {
                        return Poll::Ready(Ok(Some(conn.rbuf.split().freeze())));
                    }
                }
                Framing::Chunked(state) => match decode_chunk(&mut conn.rbuf, state)? {
                    Decoded::Data(data) => return Poll::Ready(Ok(Some(data))),
                    Decoded::End => {
                        self.framing = Framing::Done;
                        return Poll::Ready(Ok(None));
                    }
                    Decoded::More => {}
                },
            }
            if ready!(conn.poll_fill(cx))? == 0 {
                if self.framing == Framing::Eof {
                    // The end of a close-delimited body; the connection is spent.
                    self.keep_alive = false;
                    self.framing = Framing::Done;
                    return Poll::Ready(Ok(None));
                }
                return Poll::Ready(Err(H1Error::Truncated));
            }
        }
    }
}

enum Decoded {
    Data(Bytes),
    End,
    More,
}

/// Advances a chunked decoder over `buf`: data when some is there, `End` after the last
/// chunk and its trailers, `More` when `buf` holds too little.
fn decode_chunk(buf: &mut BytesMut, state: &mut Chunk) -> Result<Decoded, H1Error> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(H1Error::Invalid("chunk size line too long"));
                    }
                    return Ok(Decoded::More);
                };
                let line = &buf[..eol];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let digits = line
                    .iter()
                    .position(|&b| b == b';' || b == b' ' || b == b'\t')
                    .map_or(line, |i| &line[..i]);
                // After the size only whitespace, then extensions (`;...`), may follow.
                let rest = line[digits.len()..].trim_ascii_start();
                if digits.is_empty() || digits.len() > 15 || !(rest.is_empty() || rest[0] == b';') {
                    return Err(H1Error::Invalid("invalid chunk size"));
                }
                let mut size: u64 = 0;
                for &d in digits {
                    let v = match d {
                        b'0'..=b'9' => d - b'0',
                        b'a'..=b'f' => d - b'a' + 10,
                        b'A'..=b'F' => d - b'A' + 10,
                        _ => return Err(H1Error::Invalid("invalid chunk size")),
                    };
                    size = size * 16 + u64::from(v);
                }
                buf.advance(eol + 1);
                *state = if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let rest = left - n as u64;
                *state = if rest == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(rest)
                };
                return Ok(Decoded::Data(buf.split_to(n).freeze()));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    if buf.first().is_some_and(|&b| b != b'\r' && b != b'\n') {
                        return Err(H1Error::Invalid("chunk data not followed by CRLF"));
                    }
                    if buf.first() == Some(&b'\n') {
                        buf.advance(1);
                        *state = Chunk::Size;
                        continue;
                    }
                    return Ok(Decoded::More);
                }
                match &buf[..2] {
                    b"\r\n" => buf.advance(2),
                    [b'\n', _] => buf.advance(1),
                    _ => return Err(H1Error::Invalid("chunk data not followed by CRLF")),
                }
                *state = Chunk::Size;
            }
            Chunk::Trailers(read) => {
                // Trailer fields are read and dropped: HTTP/1.1 clients rarely ask for
                // them and nothing here routes on them. The whole section is bounded.
                let eol = buf.iter().position(|&b| b == b'\n');
                if read + eol.unwrap_or(buf.len()) > MAX_TRAILERS {
                    return Err(H1Error::Invalid("trailer section too large"));
                }
                let Some(eol) = eol else {
                    return Ok(Decoded::More);
                };
                let empty = eol == 0 || (eol == 1 && buf[0] == b'\r');
                buf.advance(eol + 1);
                if empty {
                    return Ok(Decoded::End);
                }
                *state = Chunk::Trailers(read + eol + 1);
            }
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            this.framing = Framing::Done;
            return Poll::Ready(Some(Err(Box::new(e))));
        }
        // The rest of the request body, if the backend answered before it was all sent.
        if let (Some(rest), Some(conn)) = (this.rest.as_mut(), this.conn.as_mut()) {
            match rest.poll(cx, conn) {
                Poll::Ready(Ok(())) => this.rest = None,
                Poll::Ready(Err(_)) => {
                    // The backend has its answer out; stop sending, read on, and never
                    // reuse the connection.
                    this.rest = None;
                    this.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        match ready!(this.poll_data(cx)) {
            Ok(Some(data)) => {
                if this.framing == Framing::Done {
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Err(e) => this.fail(e, cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(wire: &[u8], split: usize) -> Result<(Vec<u8>, bool), H1Error> {
        let mut buf = BytesMut::new();
        let mut state = Chunk::Size;
        let mut out = Vec::new();
        for piece in wire.chunks(split) {
            buf.extend_from_slice(piece);
            loop {
                match decode_chunk(&mut buf, &mut state)? {
                    Decoded::Data(d) => out.extend_from_slice(&d),
                    Decoded::End => return Ok((out, true)),
                    Decoded::More => break,
                }
            }
        }
        Ok((out, false))
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
        for split in 1..wire.len() {
            let (out, end) = decode_all(wire, split).expect("valid chunked body");
            assert!(end, "split {split}");
            assert_eq!(out, b"helloabcdefghijklmnopqrstuvwxyz");
        }
    }

    #[test]
    fn a_chunked_body_without_its_last_chunk_is_not_complete() {
        let (out, end) = decode_all(b"5\r\nhello\r\n", 64).expect("valid so far");
        assert_eq!(out, b"hello");
        assert!(!end);
    }

    #[test]
    fn invalid_chunk_sizes_are_rejected() {
        assert!(decode_all(b"zz\r\n", 64).is_err());
        assert!(decode_all(b"5\r\nhelloXX", 64).is_err());
        assert!(decode_all(b"ffffffffffffffffff\r\n", 64).is_err());
        assert!(decode_all(b"5 6\r\nhello\r\n", 64).is_err());
        assert!(decode_all(b"5 junk\r\nhello\r\n", 64).is_err());
        let (out, _) = decode_all(b"5 ;ext\r\nhello\r\n", 64).expect("space, then extension");
        assert_eq!(out, b"hello");
    }

    #[test]
    fn the_trailer_section_is_bounded_as_a_whole() {
        let mut wire = b"0\r\n".to_vec();
        while wire.len() <= MAX_TRAILERS + 64 {
            wire.extend_from_slice(b"a: b\r\n");
        }
        assert!(
            decode_all(&wire, 4096).is_err(),
            "endless short trailer lines"
        );
    }

    #[test]
    fn framing_fields_are_checked_strictly() {
        for head in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 5 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(head);
            assert!(
                parse_head(&mut buf).is_err(),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length:  7 \r\n\r\n"[..]);
        let head = parse_head(&mut buf).expect("valid").expect("complete");
        assert_eq!(head.framing, Framing::Length(7));
    }

    #[test]
    fn response_heads_give_status_fields_and_framing() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\nabc"[..],
        );
        let head = parse_head(&mut buf).expect("valid").expect("complete");
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.framing, Framing::Length(3));
        assert!(!head.close);
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&buf[..], b"abc");
    }

    #[test]
    fn transfer_encoding_overrides_content_length_and_close_ends_reuse() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"[..],
        );
        let head = parse_head(&mut buf).expect("valid").expect("complete");
        assert_eq!(head.framing, Framing::Chunked(Chunk::Size));
        assert!(
            head.headers.get(header::CONTENT_LENGTH).is_none(),
            "Content-Length is not passed on next to chunked"
        );
        assert!(head.close, "suspect framing: the connection is not reused");
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive, close\r\n\r\n"[..],
        );
        let head = parse_head(&mut buf).expect("valid").expect("complete");
        assert!(head.close, "close wins over keep-alive");
        let mut buf = BytesMut::from(
            &b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n"[..],
        );
        let head = parse_head(&mut buf).expect("valid").expect("complete");
        assert!(head.close, "chunked from an HTTP/1.0 server");
        let mut buf = BytesMut::from(
            &b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"[..],
        );
        let head = parse_head(&mut buf).expect("valid").expect("complete");
        assert!(!head.close, "HTTP/1.0 keep-alive");
        let mut buf = BytesMut::from(&b"HTTP/1.0 200 OK\r\n\r\n"[..]);
        let head = parse_head(&mut buf).expect("valid").expect("complete");
        assert_eq!(head.framing, Framing::Eof);
        assert!(head.close);
    }

    #[test]
    fn incomplete_and_conflicting_heads() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
        assert!(parse_head(&mut buf).expect("valid so far").is_none());
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n"[..],
        );
        assert!(parse_head(&mut buf).is_err());
    }
}
