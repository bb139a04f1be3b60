//! An optional deadline around a future, without a second copy of it.
//!
//! `match limit { Some(t) => timeout(t, fut).await, None => fut.await }` keeps two
//! places for `fut` in the enclosing future's state (the moved-from local and the
//! `Timeout`), and nested on the request path (request timeout, then backend-request
//! timeout per attempt) that doubled the per-request future twice: several KiB copied
//! into every request's box. Here the future is stored once, and the timer, only when
//! there is one, is boxed apart.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::time::{Instant, Sleep};

pin_project_lite::pin_project! {
    /// `inner`, failing with [`Elapsed`] once `at` has passed (never when `at` is `None`).
    pub struct Deadline<F> {
        #[pin]
        inner: F,
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

/// The deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl<F> Deadline<F> {
    /// `inner` under an optional deadline.
    pub fn new(at: Option<Instant>, inner: F) -> Self {
        Deadline {
            inner,
            sleep: at.map(|at| Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// The deadline, if there is one.
    pub fn at(&self) -> Option<Instant> {
        self.sleep.as_ref().map(|s| s.deadline())
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if let Some(sleep) = this.sleep {
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Elapsed));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_future_that_finishes_in_time_gives_its_output() {
        let at = Instant::now() + Duration::from_secs(1);
        let out = Deadline::new(Some(at), async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            7
        })
        .await;
        assert_eq!(out, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_future_gives_elapsed_at_the_deadline() {
        let start = Instant::now();
        let at = start + Duration::from_secs(1);
        let out = Deadline::new(Some(at), tokio::time::sleep(Duration::from_secs(5))).await;
        assert_eq!(out, Err(Elapsed));
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_deadline_it_waits_as_long_as_it_takes() {
        let start = Instant::now();
        let out = Deadline::new(None, async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "late"
        })
        .await;
        assert_eq!(out, Ok("late"));
        assert_eq!(Instant::now() - start, Duration::from_secs(3600));
    }
}
