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
//!
//! Work outlives its connection, so the connection limit no longer bounds it: a client that
//! sends and hangs up in a loop would leave task after task running. [`DetachLayer`] therefore
//! caps the work running at once; past the cap a request is answered 503 at once (with
//! `Retry-After`) and starts nothing. `/healthz` is never refused: a busy process is alive, and
//! a liveness probe refused under load would have it restarted, cutting short the very work the
//! cap protects.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::StatusCode;
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

    /// Counts one more request's work, unless `limit` are running already.
    fn try_start(self: &Arc<Self>, limit: usize) -> Option<Running> {
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |running| {
                (running < limit).then(|| running + 1)
            })
            .ok()
            .map(|_| Running(self.clone()))
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
    limit: usize,
}

impl DetachLayer {
    /// At most `limit` requests' work running at once (see the module).
    pub fn new(work: Arc<Work>, limit: usize) -> Self {
        DetachLayer { work, limit }
    }
}

impl<S> tower::Layer<S> for DetachLayer {
    type Service = Detach<S>;

    fn layer(&self, inner: S) -> Detach<S> {
        Detach {
            inner,
            work: self.work.clone(),
            limit: self.limit,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Detach<S> {
    inner: S,
    work: Arc<Work>,
    limit: usize,
}

/// The one route the cap never refuses (see the module).
const LIVENESS: &str = "/healthz";

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
        let running = if request.uri().path() == LIVENESS {
            Some(self.work.start())
        } else {
            self.work.try_start(self.limit)
        };
        let Some(running) = running else {
            return Detached::Refused(Some(
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "this instance is at its limit of requests at work; retry shortly",
                )
                .retry_after(Some(1))
                .into_response(),
            ));
        };
        let answer = self.inner.call(request);
        Detached::Running(tokio::spawn(async move {
            let answer = answer.await;
            drop(running);
            answer
        }))
    }
}

/// The wait for a detached request's answer; dropping it leaves the work running.
pub enum Detached {
    Running(JoinHandle<Result<Response, Infallible>>),
    /// Refused at the cap: answered at once, nothing started.
    Refused(Option<Response>),
}

impl Future for Detached {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let task = match &mut *self {
            Detached::Running(task) => task,
            Detached::Refused(answer) => {
                return Poll::Ready(Ok(answer.take().unwrap_or_else(|| {
                    Problem::internal(&"a refused request was polled after its answer")
                        .into_response()
                })));
            }
        };
        Pin::new(task).poll(cx).map(|joined| {
            joined.unwrap_or_else(|error| {
                // A panic inside the handlers is already a 500 (the panic layer runs in the
                // task); this is one in the layers around it, or a runtime shutting down.
                Ok(Problem::internal(&format!("a request's task failed: {error}")).into_response())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use tower::{Layer, Service, ServiceExt};

    use super::*;

    fn request(path: &str) -> Request {
        Request::get(path).body(Body::empty()).unwrap()
    }

    /// A service whose every answer waits until `release` has permits.
    fn held(
        release: Arc<tokio::sync::Semaphore>,
    ) -> Detach<
        impl Service<Request, Response = Response, Error = Infallible, Future: Send + 'static> + Clone,
    > {
        DetachLayer::new(Arc::default(), 2).layer(tower::service_fn(move |_: Request| {
            let release = release.clone();
            async move {
                let _ = release.acquire().await;
                Ok::<_, Infallible>(StatusCode::OK.into_response())
            }
        }))
    }

    #[tokio::test]
    async fn past_the_cap_a_request_is_refused_at_once_and_liveness_still_answers() {
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let mut service = held(release.clone());
        let work = service.work.clone();
        let first = service.ready().await.unwrap().call(request("/orders"));
        let second = service.ready().await.unwrap().call(request("/orders"));
        assert_eq!(work.running(), 2);

        let refused = service.ready().await.unwrap().call(request("/orders"));
        let refused = tokio::time::timeout(Duration::from_secs(10), refused)
            .await
            .expect("past the cap a request is answered at once, not held")
            .unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()["retry-after"], "1");
        assert_eq!(work.running(), 2, "a refused request starts nothing");

        // Liveness is counted but never refused.
        let alive = service.ready().await.unwrap().call(request(LIVENESS));
        assert_eq!(work.running(), 3);

        // Hung up: the waits are dropped, the work goes on and still counts.
        drop(first);
        drop(second);
        assert_eq!(work.running(), 3);
        release.add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
        assert_eq!(alive.await.unwrap().status(), StatusCode::OK);
        tokio::time::timeout(Duration::from_secs(10), work.finished())
            .await
            .expect("the hung-up work ends once released");

        let after = service.ready().await.unwrap().call(request("/orders"));
        assert_eq!(after.await.unwrap().status(), StatusCode::OK);
    }
}
