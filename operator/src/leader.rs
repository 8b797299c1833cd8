//! Leader election against the API server: the thin shell around [`crate::lease::Elector`],
//! which decides. A task carries out the elector's steps — each API call under a deadline that
//! never outlasts the current term — and publishes this process's [`Role`]. The binary
//! reconciles only while it reads `Leading`, and stops reconciling and exits as soon as it reads
//! `SteppedDown` or the task ends: a fresh start is the simplest way to be sure no stale
//! reconcile keeps writing.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};
use tracing::{debug, error, info, warn};

pub use crate::lease::Role;
use crate::lease::{Answer, Elector, Now, Step};

/// A running election.
pub struct Election {
    role: watch::Receiver<Role>,
    release: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    liveness: Liveness,
    call_timeout: Duration,
}

impl Election {
    /// Starts competing for the Lease the elector names, through `api` (a client of its own, so
    /// renewals never queue behind the controller's requests on a stuck connection). `term_end`
    /// follows the term; give its [`TermEnd::fence`] to the client that writes for the leader.
    pub fn start(api: Api<Lease>, elector: Elector, term_end: TermEnd) -> Self {
        let (role_tx, role) = watch::channel(Role::Standby);
        let (release_tx, release_rx) = oneshot::channel();
        let timing = elector.timing();
        let liveness = Liveness {
            last_step: Arc::new(Mutex::new(Instant::now())),
            limit: timing.lease_duration() * 2,
        };
        let task = tokio::spawn(campaign(
            api,
            elector,
            role_tx,
            release_rx,
            term_end.clone(),
            liveness.clone(),
        ));
        Self {
            role,
            release: Some(release_tx),
            task,
            liveness,
            call_timeout: timing.call_timeout(),
        }
    }

    pub fn role(&self) -> Role {
        *self.role.borrow()
    }

    /// Whether the election task still makes progress (for a liveness probe).
    pub fn liveness(&self) -> Liveness {
        self.liveness.clone()
    }

    /// Resolves once this process leads; false if it stepped down or the task ended first.
    pub async fn acquired(&mut self) -> bool {
        self.role
            .wait_for(|role| *role != Role::Standby)
            .await
            .is_ok_and(|role| *role == Role::Leading)
    }

    /// Resolves when this process has stepped down, or the election task ended (it only ends
    /// by stepping down, so an end for any other reason — a panic — counts as a loss).
    pub async fn lost(&mut self) {
        let _ = self.role.wait_for(|role| *role == Role::SteppedDown).await;
    }

    /// Gives the Lease up (if this process still holds it, at the version it holds), so a standby
    /// takes over at once instead of after expiry. Call only once nothing reconciles any more.
    pub async fn release(mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
        // The task answers between two steps: after at most one call, then the release call.
        let bound = self.call_timeout * 2 + Duration::from_secs(1);
        match tokio::time::timeout(bound, &mut self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, "leader election task failed"),
            Err(_) => {
                warn!("timed out releasing the leader Lease; it expires on its own");
                self.task.abort();
            }
        }
    }
}

/// This process's term, shared by the election task, the fence on the controller's writes and
/// the watchdog thread.
#[derive(Clone, Debug, Default)]
pub struct TermEnd(Arc<Mutex<Term>>);

/// What the fence and the watchdog know of the term.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Term {
    /// When the term ends unless renewed; None before the first claim and after a release.
    pub end: Option<Instant>,
    /// The elector stepped down or released: no write any more, whatever `end` says.
    pub over: bool,
}

impl Term {
    /// Whether a write may be sent at `now`: only inside a term that is not over. A process that
    /// was paused (SIGSTOP, a frozen VM) past its term finds it ended when it resumes, before its
    /// elector has run.
    pub fn permits_writes(&self, now: Instant) -> bool {
        !self.over && self.end.is_some_and(|end| now < end)
    }

    /// Whether a process still running at `now` has outlived its term by more than `grace`.
    pub fn overdue(&self, now: Instant, grace: Duration) -> bool {
        self.end
            .is_some_and(|end| now.saturating_duration_since(end) > grace)
    }
}

impl TermEnd {
    pub fn get(&self) -> Term {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(&mut Term)) {
        change(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// A tower layer refusing every write request made outside the term.
    pub fn fence(&self) -> FenceLayer {
        FenceLayer(self.clone())
    }
}

/// See [`TermEnd::fence`].
#[derive(Clone, Debug)]
pub struct FenceLayer(TermEnd);

impl<S> Layer<S> for FenceLayer {
    type Service = Fence<S>;

    fn layer(&self, inner: S) -> Fence<S> {
        Fence {
            inner,
            term: self.0.clone(),
        }
    }
}

/// Sends a write request (any method but GET, HEAD and OPTIONS) only while this process's term
/// lasts; outside it the request fails with [`NotLeading`] and never leaves the process. Reads,
/// lists and watches pass. Placed inside the client's retry layer, it checks every attempt.
#[derive(Clone, Debug)]
pub struct Fence<S> {
    inner: S,
    term: TermEnd,
}

/// The error of a write refused by the [`Fence`].
#[derive(Debug, thiserror::Error)]
#[error("this process no longer leads (its leader term ended), so it sends no more writes")]
pub struct NotLeading;

impl<S, B> Service<http::Request<B>> for Fence<S>
where
    S: Service<http::Request<B>>,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let reads = [http::Method::GET, http::Method::HEAD, http::Method::OPTIONS];
        if !reads.contains(request.method()) && !self.term.get().permits_writes(Instant::now()) {
            warn!(method = %request.method(), path = request.uri().path(), "write refused: the leader term has ended");
            return Box::pin(std::future::ready(Err(NotLeading.into())));
        }
        let response = self.inner.call(request);
        Box::pin(async move { response.await.map_err(Into::into) })
    }
}

/// Whether the election task is still stepping. It completes a step at least every retry period
/// plus one call (both shorter than the lease duration), so one quiet for twice the lease
/// duration is stuck or gone — a process a liveness probe should have restarted.
#[derive(Clone, Debug)]
pub struct Liveness {
    last_step: Arc<Mutex<Instant>>,
    limit: Duration,
}

impl Liveness {
    pub fn is_alive(&self) -> bool {
        let last = *self
            .last_step
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Instant::now().saturating_duration_since(last) <= self.limit
    }

    fn stepped(&self) {
        *self
            .last_step
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }
}

/// How often the watchdog looks.
const WATCHDOG_TICK: Duration = Duration::from_millis(200);

/// Ends the process when it is still alive `grace` after its term ended: the backstop for a
/// process too stuck to act on its own deadline (an async runtime whose threads are blocked runs
/// neither the elector's timer nor its exit). A plain thread, so it runs when the runtime does not.
pub fn spawn_watchdog(term_end: TermEnd, grace: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("lease-watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(WATCHDOG_TICK);
                if term_end.get().overdue(Instant::now(), grace) {
                    error!("the leader term ended and the process is still running; exiting now");
                    eprintln!("msa-operator: the leader term ended and the process is still running; exiting now");
                    std::process::exit(1);
                }
            }
        })
        .map(drop)
}

/// The election task: the elector's steps, until it steps down or is asked to release.
async fn campaign(
    api: Api<Lease>,
    mut elector: Elector,
    role: watch::Sender<Role>,
    mut release: oneshot::Receiver<()>,
    term_end: TermEnd,
    liveness: Liveness,
) {
    let name = elector.name().to_owned();
    let params = PostParams {
        dry_run: false,
        field_manager: Some(crate::labels::MANAGER.to_owned()),
    };
    loop {
        liveness.stepped();
        let now = Now::current();
        let step = elector.next(now);
        let deadline = elector.call_deadline(now.instant);
        let answer = match step {
            Step::StepDown => {
                publish(&role, &elector, &term_end);
                return;
            }
            Step::Sleep(until) => {
                tokio::select! {
                    biased;
                    asked = &mut release => {
                        if asked.is_ok() {
                            give_up(&api, &mut elector, &params).await;
                        }
                        // Released (or the process is ending): no more writes, and the watchdog
                        // stands down.
                        term_end.update(|term| *term = Term { end: None, over: true });
                        role.send_replace(Role::SteppedDown);
                        return;
                    }
                    () = tokio::time::sleep_until(until) => continue,
                }
            }
            Step::Read => match call(deadline, "reading the Lease", api.get_opt(&name)).await {
                Ok(Some(lease)) => Answer::Lease(Box::new(lease)),
                Ok(None) => Answer::NotFound,
                Err(_) => Answer::Failed,
            },
            Step::Create(lease) => answer_to_write(
                call(deadline, "creating the Lease", api.create(&params, &lease)).await,
                false,
            ),
            Step::Replace(lease) => answer_to_write(
                call(
                    deadline,
                    "writing the Lease",
                    api.replace(&name, &params, &lease),
                )
                .await,
                true,
            ),
        };
        elector.answer(answer, Instant::now());
        publish(&role, &elector, &term_end);
    }
}

/// The answer to a create or replace. A 409 (someone wrote since our read, or created the Lease
/// first) sends the elector to read again; a 404 on a replace means the Lease is gone. A 404 on
/// a create (no such namespace) is a failure like any other.
fn answer_to_write(result: Result<Lease, CallError>, replace: bool) -> Answer {
    match result {
        Ok(lease) => Answer::Lease(Box::new(lease)),
        Err(CallError::Conflict) => Answer::Conflict,
        Err(CallError::NotFound) if replace => Answer::NotFound,
        Err(_) => Answer::Failed,
    }
}

enum CallError {
    Conflict,
    NotFound,
    Other,
}

/// One API call under its deadline; a failure is logged here and reported as `Err`.
async fn call<T>(
    deadline: Instant,
    what: &str,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, CallError> {
    match tokio::time::timeout_at(deadline, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(kube::Error::Api(status))) if status.is_conflict() => {
            debug!(
                what,
                "conflict: someone else wrote the Lease since our read"
            );
            Err(CallError::Conflict)
        }
        Ok(Err(kube::Error::Api(status))) if status.is_not_found() => {
            debug!(what, "the Lease or its namespace does not exist");
            Err(CallError::NotFound)
        }
        Ok(Err(error)) => {
            warn!(what, %error, "leader election call failed; retrying");
            Err(CallError::Other)
        }
        Err(_) => {
            warn!(
                what,
                "the API server did not answer in time; retrying (a leader steps down at the end of its renew deadline)"
            );
            Err(CallError::Other)
        }
    }
}

/// Releases the Lease if the elector still holds it.
async fn give_up(api: &Api<Lease>, elector: &mut Elector, params: &PostParams) {
    let timeout = elector.timing().call_timeout();
    let Some(lease) = elector.release(Now::current()) else {
        debug!("not holding the leader Lease: nothing to release");
        return;
    };
    let release = api.replace(elector.name(), params, &lease);
    match tokio::time::timeout(timeout, release).await {
        Ok(Ok(_)) => info!("released the leader Lease"),
        Ok(Err(kube::Error::Api(status))) if status.is_conflict() => {
            info!("the leader Lease changed since our last renewal; left it as it is");
        }
        Ok(Err(error)) => {
            warn!(%error, "could not release the leader Lease; it expires on its own")
        }
        Err(_) => warn!("timed out releasing the leader Lease; it expires on its own"),
    }
}

/// Publishes the elector's role (logging transitions) and the end of its term.
fn publish(role: &watch::Sender<Role>, elector: &Elector, term_end: &TermEnd) {
    let now = elector.role();
    // Before the role is published, so the controller starts inside the term, and the fence
    // closes before anyone hears of the step-down. After a step-down the last end stays for the
    // watchdog.
    match now {
        Role::Leading => term_end.update(|term| term.end = elector.term_deadline()),
        Role::SteppedDown => term_end.update(|term| term.over = true),
        Role::Standby => {}
    }
    role.send_if_modified(|before| {
        if *before == now {
            return false;
        }
        match now {
            Role::Leading => info!(identity = elector.identity(), "acquired the leader Lease"),
            Role::SteppedDown if *before == Role::Leading => error!(
                identity = elector.identity(),
                holder = elector.holder().unwrap_or("nobody"),
                "stepped down: the leader Lease could not be renewed within the renew deadline, or another replica holds it"
            ),
            Role::SteppedDown | Role::Standby => {}
        }
        *before = now;
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_permitted_only_inside_a_term_that_is_not_over() {
        let now = Instant::now();
        let ends_soon = Term {
            end: Some(now + Duration::from_secs(3)),
            over: false,
        };
        assert!(ends_soon.permits_writes(now));
        // A process resuming from a pause past its term.
        assert!(!ends_soon.permits_writes(now + Duration::from_secs(3)));
        assert!(!Term::default().permits_writes(now), "never led");
        let stepped_down = Term {
            over: true,
            ..ends_soon
        };
        assert!(!stepped_down.permits_writes(now), "over before its end");
    }

    #[test]
    fn the_watchdog_fires_only_past_the_end_of_a_term_and_its_grace() {
        let end = Instant::now() + Duration::from_secs(10);
        let grace = Duration::from_secs(1);
        let term = Term {
            end: Some(end),
            over: true,
        };
        assert!(
            !Term::default().overdue(end + Duration::from_secs(60), grace),
            "no term"
        );
        assert!(!term.overdue(end - Duration::from_secs(5), grace));
        assert!(!term.overdue(end + grace, grace));
        assert!(term.overdue(end + grace + Duration::from_millis(1), grace));
    }
}
