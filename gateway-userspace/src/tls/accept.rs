//! The server handshake: ClientHello, listener by SNI, that listener's config, all
//! within the handshake timeout.

use std::future::Future;
use std::io;
use std::time::Duration;

use gateway_config::ListenerId;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};

use super::TlsBindings;

/// Why a TLS connection from a client was not established. The caller closes it.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client sent nothing, or not its whole handshake, in time.
    #[error("TLS handshake not done within {after:?}")]
    HandshakeTimeout {
        /// The timeout that expired.
        after: Duration,
    },
    /// The ClientHello could not be read (I/O error, not TLS, malformed).
    #[error("reading the ClientHello: {source}")]
    ClientHello {
        /// The error (rustls errors come wrapped in `io::Error`).
        #[source]
        source: io::Error,
    },
    /// No listener of the bind serves this SNI (or, without SNI, there is no listener
    /// without hostname).
    #[error("no listener for SNI {sni:?}")]
    NoListener {
        /// The SNI sent.
        sni: Option<Box<str>>,
    },
    /// The selected listener does not terminate TLS on this bind (passthrough: the
    /// caller should have peeked), or its TLS config failed to build (fail closed).
    #[error("listener {listener:?} has no TLS server config")]
    NoConfig {
        /// The listener the SNI selected.
        listener: ListenerId,
    },
    /// The handshake failed (bad certificate, no common parameters, I/O).
    #[error("TLS handshake: {source}")]
    Handshake {
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// An established TLS connection and the listener its SNI selected.
#[derive(Debug)]
pub struct Terminated<IO> {
    /// The decrypted stream.
    pub stream: TlsStream<IO>,
    /// The listener the SNI selected: [`super::is_misdirected`] checks each request's
    /// Host against it.
    pub listener: ListenerId,
}

impl<IO> Terminated<IO> {
    /// The negotiated ALPN protocol.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.stream.get_ref().1.alpn_protocol()
    }

    /// `true` when ALPN chose HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.alpn() == Some(b"h2")
    }

    /// The SNI the client sent.
    pub fn sni(&self) -> Option<&str> {
        self.stream.get_ref().1.server_name()
    }
}

/// Complete the server handshake of a connection accepted on the bind at `bind` (an
/// index in `bindings.table().binds()`): read the ClientHello, select the listener by
/// SNI, hand the handshake to that listener's config, all within `timeout` (use
/// [`super::HANDSHAKE_TIMEOUT`]).
pub async fn accept<IO>(
    bindings: &TlsBindings,
    bind: usize,
    io: IO,
    timeout: Duration,
) -> Result<Terminated<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    with_timeout(timeout, handshake(bindings, bind, io)).await
}

async fn handshake<IO>(
    bindings: &TlsBindings,
    bind: usize,
    io: IO,
) -> Result<Terminated<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
        .await
        .map_err(|source| HandshakeError::ClientHello { source })?;
    let hello = start.client_hello();
    let sni = hello.server_name();
    let table = bindings.table();
    let listener = table
        .binds()
        .get(bind)
        .and_then(|b| table.select_listener(b, sni))
        .ok_or_else(|| HandshakeError::NoListener {
            sni: sni.map(Into::into),
        })?
        .id;
    let config = bindings
        .get(bind)
        .and_then(|b| b.config_for(listener))
        .ok_or(HandshakeError::NoConfig { listener })?
        .clone();
    let stream = start
        .into_stream(config)
        .await
        .map_err(|source| HandshakeError::Handshake { source })?;
    Ok(Terminated { stream, listener })
}

/// `acceptor.accept(io)` within `timeout` (for a bind with one config:
/// `TlsAcceptor::from(bind_tls.server_config()?.clone())`).
pub async fn accept_with_timeout<IO>(
    acceptor: &TlsAcceptor,
    io: IO,
    timeout: Duration,
) -> Result<TlsStream<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    with_timeout(timeout, async {
        acceptor
            .accept(io)
            .await
            .map_err(|source| HandshakeError::Handshake { source })
    })
    .await
}

async fn with_timeout<T>(
    after: Duration,
    f: impl Future<Output = Result<T, HandshakeError>>,
) -> Result<T, HandshakeError> {
    tokio::time::timeout(after, f)
        .await
        .unwrap_or(Err(HandshakeError::HandshakeTimeout { after }))
}
