//! HTTP: serve HTTP/1.1 (keep-alive, pipelining) and h2c with prior knowledge on plain
//! listeners, route each request through the snapshot's `RouteTable`, apply the filters,
//! and proxy to a backend endpoint from the worker's pools.
//!
//! Stages: [`conn`] (one client connection, its timers), [`proxy`] (one request), [`filter`]
//! (Gateway API filters), [`forward`] (hop-by-hop and forwarding headers), [`error`] (the
//! one place that turns failures into status codes), [`body`] (response bodies).

pub mod body;
pub mod conn;
mod deadline;
pub mod error;
pub mod filter;
pub mod forward;
pub mod proxy;
pub mod stats;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioExecutor;

pub use conn::{serve, serve_tls};
pub use error::ProxyError;
pub use forward::ForwardedHeaders;

/// Largest request head (request line and headers) accepted; beyond it: 431.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Most header fields in a request; beyond it: 431.
pub const MAX_HEADERS: usize = 100;
/// hyper's own parser limits, twice ours: the gateway answers 431 at its limits (hyper
/// 1.12 closes without its automatic 431), and hyper closes heads beyond these outright.
const PARSER_SLACK: usize = 2;
/// Longest request target; beyond it: 414.
pub const MAX_URI: usize = 8 * 1024;
/// HTTP/2 streams a client may have open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;

/// The HTTP/1.1 and HTTP/2 servers of every client connection, built once per worker;
/// [`conn`] picks one by the connection's first bytes.
pub struct Servers {
    /// HTTP/1.1 (and 1.0), upgrades included.
    pub http1: http1::Builder,
    /// HTTP/2: h2c with prior knowledge, or h2 over TLS.
    pub http2: http2::Builder<TokioExecutor>,
}

impl Servers {
    /// The settings every listener shares.
    pub fn new() -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .keep_alive(true)
            .max_buf_size(MAX_HEADER_BLOCK * PARSER_SLACK)
            .max_headers(MAX_HEADERS * PARSER_SLACK)
            // The header read and idle timers are kept by `conn` (hyper's would also close
            // idle keep-alive connections after the header timeout).
            .header_read_timeout(None)
            .pipeline_flush(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .max_header_list_size(MAX_HEADER_BLOCK as u32);
        Servers { http1, http2 }
    }
}

impl Default for Servers {
    fn default() -> Self {
        Self::new()
    }
}
