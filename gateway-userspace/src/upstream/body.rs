//! Bodies crossing the gateway towards and from backends.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::{h1::H1Body, InFlight};

/// The error type of bodies the gateway builds.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Frames of a request body kept for mirrors; a mirror that falls this far behind is cut
/// off (its copy fails) instead of slowing the real request down.
const MIRROR_BUFFER: usize = 64;

#[derive(Debug, thiserror::Error)]
#[error("the request body could not be copied to the mirror")]
struct MirrorCutOff;

/// A request body sent to a backend.
pub struct ReqBody {
    kind: ReqKind,
}

enum ReqKind {
    Empty,
    Incoming(Incoming),
    /// The client's body, copied to mirrors as it passes.
    Tee {
        body: Incoming,
        taps: Vec<Tap>,
    },
    /// A mirror's copy of another request's body.
    Mirror {
        rx: mpsc::Receiver<Bytes>,
        cut_off: Arc<AtomicBool>,
    },
}

/// The sending side of a mirror's body copy. Dropped before the client's body ended
/// (its last frame passed, or its end), because the real request failed or was given up,
/// it cuts its mirror off, so that the mirror never takes a short body for a whole one.
pub struct Tap {
    tx: mpsc::Sender<Bytes>,
    cut_off: Arc<AtomicBool>,
    /// The client's body ended cleanly and every frame went to the mirror.
    complete: bool,
}

impl Drop for Tap {
    fn drop(&mut self) {
        if !self.complete {
            self.cut_off.store(true, Ordering::Relaxed);
        }
    }
}

impl ReqBody {
    /// No body.
    pub fn empty() -> Self {
        ReqBody {
            kind: ReqKind::Empty,
        }
    }

    /// The client's body, streamed.
    pub fn incoming(body: Incoming) -> Self {
        if body.is_end_stream() {
            return Self::empty();
        }
        ReqBody {
            kind: ReqKind::Incoming(body),
        }
    }

    /// A body copy for a mirror, and the tap that feeds it.
    pub fn mirror() -> (Self, Tap) {
        let (tx, rx) = mpsc::channel(MIRROR_BUFFER);
        let cut_off = Arc::new(AtomicBool::new(false));
        (
            ReqBody {
                kind: ReqKind::Mirror {
                    rx,
                    cut_off: cut_off.clone(),
                },
            },
            Tap {
                tx,
                cut_off,
                complete: false,
            },
        )
    }

    /// The client's body, copied to every tap as it streams.
    pub fn tee(body: Incoming, taps: Vec<Tap>) -> Self {
        ReqBody {
            kind: ReqKind::Tee { body, taps },
        }
    }
}

fn feed(taps: &mut Vec<Tap>, data: &Bytes) {
    // A tap that cannot take the frame is dropped incomplete, which cuts its mirror off.
    taps.retain(|tap| tap.tx.try_send(data.clone()).is_ok());
}

/// The client's body ended cleanly: every mirror's copy ends cleanly too.
fn finish(taps: &mut Vec<Tap>) {
    for tap in taps.iter_mut() {
        tap.complete = true;
    }
    taps.clear();
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            ReqKind::Empty => Poll::Ready(None),
            ReqKind::Incoming(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ReqKind::Tee { body, taps } => match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        feed(taps, data);
                    }
                    // A sender may stop at `is_end_stream` without asking for the end
                    // (hyper's HTTP/2 client does): the copies are whole once it is true.
                    if body.is_end_stream() {
                        finish(taps);
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Some(Err(err)) => {
                    taps.clear(); // cut off: not complete
                    Poll::Ready(Some(Err(err.into())))
                }
                None => {
                    finish(taps);
                    Poll::Ready(None)
                }
            },
            ReqKind::Mirror { rx, cut_off } => match ready!(rx.poll_recv(cx)) {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None if cut_off.load(Ordering::Relaxed) => {
                    Poll::Ready(Some(Err(Box::new(MirrorCutOff))))
                }
                None => Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ReqKind::Empty => true,
            ReqKind::Incoming(body) | ReqKind::Tee { body, .. } => body.is_end_stream(),
            ReqKind::Mirror { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ReqKind::Empty => SizeHint::with_exact(0),
            ReqKind::Incoming(body) | ReqKind::Tee { body, .. } => body.size_hint(),
            ReqKind::Mirror { .. } => SizeHint::default(),
        }
    }
}

/// A response body from a backend: read by the request's own task from a pooled HTTP/1.1
/// connection (which goes back to the pool when the exchange ended cleanly), or from
/// hyper's HTTP/2 or upgrade-capable client. An error is passed on, so that the client sees
/// a truncated response, never a clean one.
pub struct UpstreamBody {
    inner: Inner,
    guard: Option<InFlight>,
}

enum Inner {
    Hyper(Incoming),
    H1(H1Body),
}

impl UpstreamBody {
    pub(crate) fn hyper(inner: Incoming, guard: InFlight) -> Self {
        Self::new(Inner::Hyper(inner), guard)
    }

    pub(crate) fn h1(inner: H1Body, guard: InFlight) -> Self {
        Self::new(Inner::H1(inner), guard)
    }

    fn new(inner: Inner, guard: InFlight) -> Self {
        let mut body = UpstreamBody {
            inner,
            guard: Some(guard),
        };
        // A body that is already complete (HEAD, 204, 304, Content-Length: 0) may never
        // be polled: the request is no longer in flight.
        if body.is_end_stream() {
            body.guard = None;
        }
        body
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = ready!(match &mut this.inner {
            Inner::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inner::H1(b) => Pin::new(b).poll_frame(cx),
        });
        match &frame {
            None | Some(Err(_)) => this.guard = None,
            Some(Ok(_)) => {
                if this.is_end_stream() {
                    this.guard = None;
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper(b) => b.is_end_stream(),
            Inner::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper(b) => b.size_hint(),
            Inner::H1(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    async fn frames(body: ReqBody) -> (Vec<Bytes>, bool) {
        let mut body = std::pin::pin!(body);
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => out.extend(f.into_data().ok()),
                Err(_) => return (out, false),
            }
        }
        (out, true)
    }

    #[tokio::test]
    async fn a_mirror_copy_ends_cleanly_only_when_the_client_body_did() {
        let (copy, tap) = ReqBody::mirror();
        let mut taps = vec![tap];
        feed(&mut taps, &Bytes::from_static(b"part"));
        finish(&mut taps);
        assert_eq!(
            frames(copy).await,
            (vec![Bytes::from_static(b"part")], true)
        );

        // The real request gave up (its body dropped) halfway: the copy fails.
        let (copy, tap) = ReqBody::mirror();
        let mut taps = vec![tap];
        feed(&mut taps, &Bytes::from_static(b"part"));
        drop(taps);
        assert_eq!(
            frames(copy).await,
            (vec![Bytes::from_static(b"part")], false)
        );
    }

    #[tokio::test]
    async fn a_mirror_that_falls_behind_is_cut_off() {
        let (copy, tap) = ReqBody::mirror();
        let mut taps = vec![tap];
        for _ in 0..=MIRROR_BUFFER {
            feed(&mut taps, &Bytes::from_static(b"x"));
        }
        assert!(taps.is_empty(), "the full tap was let go");
        let (got, clean) = frames(copy).await;
        assert_eq!(got.len(), MIRROR_BUFFER);
        assert!(!clean);
    }
}
