//! Leader election against the API server: the thin shell around [`crate::lease::Elector`],
//! which decides. A task carries out the elector's steps — each API call under a deadline that
//! never outlasts the current term — and publishes this process's [`Role`]. The binary
//! reconciles only while it reads `Leading`, and stops reconciling and exits as soon as it reads
//! `SteppedDown` or the task ends: a fresh start is the simplest way to be sure no stale
//! reconcile keeps writing.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

pub use crate::lease::Role;
use crate::lease::{Answer, Elector, Now, Step};

/// A running election.
pub struct Election {
    role: watch::Receiver<Role>,
    release: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    term_end: TermEnd,
    liveness: Liveness,
    call_timeout: Duration,
}

impl Election {
    /// Starts competing for the Lease the elector names, through `api` (a client of its own, so
    /// renewals never queue behind the controller's requests on a stuck connection).
    pub fn start(api: Api<Lease>, elector: Elector) -> Self {
        let (role_tx, role) = watch::channel(Role::Standby);
        let (release_tx, release_rx) = oneshot::channel();
        let term_end = TermEnd::default();
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
            term_end,
            liveness,
            call_timeout: timing.call_timeout(),
        }
    }

    pub fn role(&self) -> Role {
        *self.role.borrow()
    }

    /// When the current term ends unless renewed, readable from a plain thread (the watchdog).
    pub fn term_end(&self) -> TermEnd {
        self.term_end.clone()
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

/// The end of this process's term, shared with the watchdog thread.
#[derive(Clone, Debug, Default)]
pub struct TermEnd(Arc<Mutex<Option<std::time::Instant>>>);

impl TermEnd {
    fn set(&self, end: Option<Instant>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = end.map(Instant::into_std);
    }

    pub fn get(&self) -> Option<std::time::Instant> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
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

/// Whether a process whose term ends at `end` has outlived it by more than `grace`.
pub fn overdue(end: Option<std::time::Instant>, now: std::time::Instant, grace: Duration) -> bool {
    end.is_some_and(|end| now.saturating_duration_since(end) > grace)
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
                if overdue(term_end.get(), std::time::Instant::now(), grace) {
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
                            term_end.set(None);
                        }
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
    if now == Role::Leading {
        term_end.set(elector.term_deadline());
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
    fn the_watchdog_fires_only_past_the_end_of_a_term_and_its_grace() {
        let end = std::time::Instant::now();
        let grace = Duration::from_secs(1);
        assert!(
            !overdue(None, end + Duration::from_secs(60), grace),
            "no term"
        );
        assert!(!overdue(Some(end), end - Duration::from_secs(5), grace));
        assert!(!overdue(Some(end), end + grace, grace));
        assert!(overdue(
            Some(end),
            end + grace + Duration::from_millis(1),
            grace
        ));
    }
}
