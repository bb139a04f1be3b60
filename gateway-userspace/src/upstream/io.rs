//! The byte stream to a backend endpoint: plain TCP, or TLS under a BackendTLSPolicy
//! profile (never one standing in for the other).

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, Waker},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

/// A connection to a backend.
pub enum BackendIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, verified under the endpoint's profile (boxed: the rustls state is large and
    /// plain connections should not carry its size).
    Tls(Box<TlsStream<TcpStream>>),
}

impl BackendIo {
    /// Writes what the socket takes now without waiting; `WouldBlock` when it takes
    /// nothing. Over TLS the bytes are taken into the session (and sent as far as the
    /// socket allows; the rest goes out on the next write or flush).
    pub(crate) fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BackendIo::Plain(s) => s.try_write(buf),
            BackendIo::Tls(s) => {
                let mut cx = Context::from_waker(Waker::noop());
                match Pin::new(&mut **s).poll_write(&mut cx, buf) {
                    Poll::Ready(r) => r,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }

    /// `false` when the backend closed the connection (or sent something unasked) while
    /// it was idle. Over TLS, records that carry no data (TLS 1.3 session tickets, which
    /// servers send after the handshake) are consumed and do not count as unasked.
    pub(crate) fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self {
            BackendIo::Plain(s) => match s.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            BackendIo::Tls(s) => {
                if matches!(s.get_ref().0.poll_read_ready(&mut cx), Poll::Pending) {
                    return true;
                }
                let mut probe = [0u8; 1];
                let mut buf = ReadBuf::new(&mut probe);
                match Pin::new(&mut **s).poll_read(&mut cx, &mut buf) {
                    Poll::Pending => true,
                    Poll::Ready(Ok(())) | Poll::Ready(Err(_)) => false,
                }
            }
        }
    }
}

impl AsyncRead for BackendIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendIo::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendIo::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendIo::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendIo::Plain(s) => s.is_write_vectored(),
            BackendIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendIo::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendIo::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendIo::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
