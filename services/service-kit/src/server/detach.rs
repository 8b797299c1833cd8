//! A request's work runs to its end whatever its client does.
//!
//! When a client hangs up, hyper drops the future answering it, and with it whatever that
//! future was awaiting: a `BEGIN` half-way (which sqlx 0.8.6 cannot always roll back, see
//! [`crate::db::hygiene`]), a call to a peer, a saga between two steps. [`Detach`] runs each
//! request's future in a task of its own and only waits for it, so a hang-up drops the wait,
//! never the work: transactions commit or roll back, sagas finish, and the answer is logged
//! and counted as usual. One spawn per request.
//!
//! The task carries everything a request needs: the layers inside [`Detach`] (the tracing span,
//! the request id, the correlation context of [`crate::context::scope`], metrics, the
//! panic-to-500 layer) run within it. [`Work`] counts the tasks still running, so a drain can
//! wait for work whose client is gone.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::problem::Problem;

/// Requests whose work is still running (answered or not).
#[derive(Debug, Default)]
pub struct Work {
    running: AtomicUsize,
    idle: Notify,
}

impl Work {
    /// How many requests' work is running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Resolves once no work is running.
    pub async fn finished(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            idle.await;
        }
    }

    fn start(self: &Arc<Self>) -> Running {
        self.running.fetch_add(1, Ordering::AcqRel);
        Running(self.clone())
    }
}

/// One request's work, counted until dropped.
struct Running(Arc<Work>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Wraps a service so that each call runs in a task of its own; see the module.
#[derive(Clone, Debug)]
pub struct DetachLayer {
    work: Arc<Work>,
}

impl DetachLayer {
    pub fn new(work: Arc<Work>) -> Self {
        DetachLayer { work }
    }
}

impl<S> tower::Layer<S> for DetachLayer {
    type Service = Detach<S>;

    fn layer(&self, inner: S) -> Detach<S> {
        Detach {
            inner,
            work: self.work.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Detach<S> {
    inner: S,
    work: Arc<Work>,
}

impl<S> tower::Service<Request> for Detach<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Detached;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Detached {
        let running = self.work.start();
        let answer = self.inner.call(request);
        Detached(tokio::spawn(async move {
            let answer = answer.await;
            drop(running);
            answer
        }))
    }
}

/// The wait for a detached request's answer; dropping it leaves the work running.
pub struct Detached(JoinHandle<Result<Response, Infallible>>);

impl Future for Detached {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|joined| {
            joined.unwrap_or_else(|error| {
                // A panic inside the handlers is already a 500 (the panic layer runs in the
                // task); this is one in the layers around it, or a runtime shutting down.
                Ok(Problem::internal(&format!("a request's task failed: {error}")).into_response())
            })
        })
    }
}
