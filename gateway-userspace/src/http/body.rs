//! The response body the gateway sends to clients: empty, a local answer, or a backend's
//! body streamed through (with the request's deadline, if the rule has one).

use std::{
    future::Future as _,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::conn::RequestGuard;
use crate::upstream::{BoxError, UpstreamBody};

#[derive(Debug, thiserror::Error)]
#[error("timeouts.request elapsed while the response body was streaming")]
struct BodyDeadline;

/// A response body.
pub struct RespBody {
    kind: Kind,
    deadline: Option<Pin<Box<Sleep>>>,
    /// Keeps the client connection's request count until the body is done.
    _guard: Option<RequestGuard>,
}

enum Kind {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
}

impl RespBody {
    /// No body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// A body held in memory.
    pub fn full(bytes: Bytes) -> Self {
        RespBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            deadline: None,
            _guard: None,
        }
    }

    /// A backend's body, streamed.
    pub fn upstream(body: UpstreamBody) -> Self {
        RespBody {
            kind: Kind::Upstream(body),
            deadline: None,
            _guard: None,
        }
    }

    /// The body fails (the client sees a truncated response) if it is still streaming
    /// when `deadline` passes.
    pub fn with_deadline(mut self, deadline: tokio::time::Instant) -> Self {
        self.deadline = Some(Box::pin(tokio::time::sleep_until(deadline)));
        self
    }

    pub(crate) fn with_guard(mut self, guard: RequestGuard) -> Self {
        self._guard = Some(guard);
        self
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(body) => {
                if let Poll::Ready(frame) = Pin::new(body).poll_frame(cx) {
                    return Poll::Ready(frame);
                }
                if let Some(deadline) = this.deadline.as_mut() {
                    ready!(deadline.as_mut().poll(cx));
                    return Poll::Ready(Some(Err(Box::new(BodyDeadline))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(body) => body.size_hint(),
        }
    }
}
