//! What a connection accepted on a bind becomes, decided by the bind's listeners in the
//! configuration the worker serves when it arrives:
//!
//! - plain HTTP: [`http::serve`];
//! - a port of terminating listeners only (HTTPS, TLS mode Terminate): the handshake
//!   ([`tls::accept`], the SNI picks the listener and its certificate), then HTTP over
//!   TLS ([`http::serve_tls`], h2 or HTTP/1.1 by ALPN) or, for a TLSRoute, the decrypted
//!   stream copied to a backend over plain TCP;
//! - a port with passthrough listeners (alone or mixed with terminating ones): the
//!   ClientHello is peeked ([`passthrough::peek_client_hello`], nothing consumed) and the
//!   SNI decides: splice the untouched TCP stream to a TLSRoute backend, or hand it to the
//!   handshake above. No SNI, no listener, no route, or an unusable backend: the TCP
//!   connection is reset, never answered with a TLS alert.
//!
//! One deadline of [`tls::HANDSHAKE_TIMEOUT`] (10 s, DESIGN §6) covers the peek and the
//! handshake together.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use gateway_config::{Bind, Listener, ListenerProtocol};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};
use tracing::debug;

use crate::{
    backend_tls::Alpn,
    http,
    passthrough::{self, CloseReason, Decision},
    tls,
    upstream::{self, UpstreamError},
    worker::{View, WorkerCtx},
};

/// How long a terminated TLS connection that cannot be forwarded gets to receive its
/// `close_notify`.
const CLOSE_NOTIFY_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves one connection accepted on `bind` (the bind's configured address) until it
/// ends.
pub async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    bind: SocketAddr,
    ctx: Arc<WorkerCtx>,
) {
    let Some(view) = ctx.view() else {
        return;
    };
    let table = view.table();
    let Some((index, b)) = table
        .binds()
        .iter()
        .enumerate()
        .find(|(_, b)| b.addr == bind)
    else {
        // A bind the configuration no longer has: its socket is being closed.
        return reset(stream);
    };
    if !b.tls {
        return http::serve(stream, peer, bind, ctx).await;
    }
    let deadline = Instant::now() + tls::HANDSHAKE_TIMEOUT;
    // The TLS paths are boxed: their futures (a hyper connection over TLS, a copy
    // loop) would otherwise make every connection's task, plain HTTP included, as large
    // as the largest of them.
    if !has_passthrough(&view, b) {
        return Box::pin(terminate(stream, peer, bind, index, ctx, &view, deadline)).await;
    }
    Box::pin(peek_and_route(
        stream, peer, bind, index, ctx, &view, deadline,
    ))
    .await;
}

/// A port with passthrough listeners: the SNI decides between splicing and terminating.
async fn peek_and_route(
    stream: TcpStream,
    peer: SocketAddr,
    bind: SocketAddr,
    index: usize,
    ctx: Arc<WorkerCtx>,
    view: &Arc<View>,
    deadline: Instant,
) {
    let table = view.table();
    let Some(b) = table.binds().get(index) else {
        return reset(stream);
    };
    let sni = match passthrough::peek_client_hello(&stream, tls::HANDSHAKE_TIMEOUT).await {
        Ok(sni) => sni,
        Err(err) => {
            debug!(%peer, %bind, error = %err, "no ClientHello: closing");
            return reset(stream);
        }
    };
    let sni = sni.as_ref().map(|s| s.as_str());
    let endpoint = match passthrough::route(table, b, sni) {
        Decision::Terminate { .. } => {
            return terminate(stream, peer, bind, index, ctx, view, deadline).await;
        }
        Decision::Forward { target, .. } => passthrough::pick_endpoint(target, fastrand::u64(..)),
        Decision::Close(reason) => Err(reason),
    };
    match endpoint {
        Ok(addr) => splice_to(stream, peer, addr).await,
        Err(reason) => {
            debug!(%peer, %bind, ?sni, %reason, "passthrough: closing");
            reset(stream);
        }
    }
}

fn has_passthrough(view: &View, bind: &Bind) -> bool {
    bind.listeners.iter().any(|id| {
        view.table()
            .listener(*id)
            .is_some_and(|l| l.protocol == ListenerProtocol::TlsPassthrough)
    })
}

/// Passthrough: connect the endpoint and copy both ways, half-closes included.
async fn splice_to(mut client: TcpStream, peer: SocketAddr, addr: SocketAddr) {
    let Ok(mut backend) = upstream::connect_tcp(addr).await else {
        debug!(%peer, backend = %addr, "passthrough: backend connection failed, closing");
        return reset(client);
    };
    if let Err(err) = passthrough::splice_bidirectional(&mut client, &mut backend).await {
        debug!(%peer, backend = %addr, error = %err, "passthrough connection ended");
    }
}

/// The TLS handshake by the bind's terminating listeners, within `deadline`, then what
/// the selected listener serves.
async fn terminate(
    stream: TcpStream,
    peer: SocketAddr,
    bind: SocketAddr,
    index: usize,
    ctx: Arc<WorkerCtx>,
    view: &Arc<View>,
    deadline: Instant,
) {
    let left = deadline.saturating_duration_since(Instant::now());
    let terminated = match tls::accept(view.tls(), index, stream, left).await {
        Ok(t) => t,
        Err(err) => {
            debug!(%peer, %bind, error = %err, "TLS handshake failed");
            return;
        }
    };
    let Some(listener) = view.table().listener(terminated.listener) else {
        return;
    };
    match listener.protocol {
        ListenerProtocol::Https => {
            http::serve_tls(
                terminated.stream,
                peer,
                bind,
                ctx,
                view.clone(),
                terminated.listener,
            )
            .await;
        }
        ListenerProtocol::TlsTerminate => {
            let sni = terminated.sni().map(str::to_owned);
            forward_terminated(terminated.stream, peer, listener, sni.as_deref(), view).await;
        }
        ListenerProtocol::Http | ListenerProtocol::TlsPassthrough => {}
    }
}

/// TLS listener in Terminate mode: the TLSRoute the SNI selects, then the decrypted
/// stream both ways to its backend: over plain TCP, or re-encrypted under the backend's
/// BackendTLSPolicy (no ALPN offered: the stream is opaque). An invalid policy or a
/// failed backend handshake closes the client's connection, never plaintext.
async fn forward_terminated<S>(
    mut client: S,
    peer: SocketAddr,
    listener: &Listener,
    sni: Option<&str>,
    view: &View,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut backend = match connect_terminated(peer, listener, sni, view).await {
        Ok(b) => b,
        Err(reason) => {
            debug!(%peer, ?sni, %reason, "TLS terminate: closing");
            let _ = tokio::time::timeout(CLOSE_NOTIFY_TIMEOUT, client.shutdown()).await;
            return;
        }
    };
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        debug!(%peer, error = %err, "TLS terminate connection ended");
    }
}

/// The backend connection of a terminated TLS connection: the TLSRoute the SNI selects,
/// one of its endpoints, then TCP, or TLS under the backend's BackendTLSPolicy.
async fn connect_terminated(
    peer: SocketAddr,
    listener: &Listener,
    sni: Option<&str>,
    view: &View,
) -> Result<upstream::BackendIo, CloseReason> {
    let target = sni
        .and_then(|sni| view.table().route_tls(listener, sni))
        .ok_or(CloseReason::NoRoute)?;
    let (backend, addr) = passthrough::pick(target, fastrand::u64(..))?;
    let profile = view.backend_tls().resolve(&backend.tls).map_err(|err| {
        tracing::warn!(%peer, backend = %backend.name, error = %err, "TLS terminate: backend TLS unusable, closing");
        CloseReason::BackendTls
    })?;
    upstream::connect(addr, profile.map(|p| &**p), Alpn::None)
        .await
        .map_err(|err| match err {
            UpstreamError::Tls { .. } => CloseReason::BackendTls,
            _ => CloseReason::Connect,
        })
}

/// Closes with a reset (`SO_LINGER` 0): the gateway speaks no TLS on this path, so a
/// refusal is a TCP one, never an alert.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
