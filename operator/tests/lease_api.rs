//! Leader election against a mocked API server that keeps one Lease the way the real one does
//! (a replace must carry the stored resourceVersion or gets 409; a second create gets 409), on
//! tokio's paused clock: every call pinned, a renewal that never answers, a lost race.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::client::Body;
use kube::{Api, Client};
use msa_operator::leader::{Election, NotLeading, Role, TermEnd};
use msa_operator::lease::{Elector, Timing};
use serde_json::{Value, json};
use tokio::time::Instant;

const NAMESPACE: &str = "msa-system";
const NAME: &str = "msa-operator";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/msa-system/leases";

/// One request the API server received, and when (on the paused clock).
#[derive(Clone, Debug)]
struct Call {
    method: Method,
    path: String,
    body: Value,
    at: Instant,
}

impl Call {
    fn is_write(&self) -> bool {
        self.method != Method::GET
    }

    /// The resourceVersion a write is conditional on.
    fn version(&self) -> Option<&str> {
        self.body["metadata"]["resourceVersion"].as_str()
    }

    fn holder(&self) -> Option<&str> {
        self.body["spec"]["holderIdentity"].as_str()
    }
}

/// The API server's state: the stored Lease, every call, and what to do to the next ones.
#[derive(Default)]
struct Server {
    lease: Option<Value>,
    version: u64,
    calls: Vec<Call>,
    /// From now on, receive requests but never answer them (a connection gone silent).
    silent: bool,
    /// Before answering the next replace, let another candidate write this holder first.
    sneak_in: Option<String>,
}

impl Server {
    fn store(&mut self, mut lease: Value) -> Value {
        self.version += 1;
        lease["metadata"]["resourceVersion"] = json!(self.version.to_string());
        lease["metadata"]["name"] = json!(NAME);
        lease["metadata"]["namespace"] = json!(NAMESPACE);
        self.lease = Some(lease.clone());
        lease
    }

    /// Someone else takes or renews the Lease.
    fn write_holder(&mut self, holder: Option<&str>, renew: jiff::Timestamp) {
        let mut lease = self.lease.clone().unwrap_or_else(|| {
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {}, "spec": {}})
        });
        lease["spec"]["holderIdentity"] = json!(holder);
        lease["spec"]["leaseDurationSeconds"] = json!(15);
        lease["spec"]["renewTime"] = json!(renew.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
        self.store(lease);
    }

    fn answer(&mut self, call: &Call) -> (StatusCode, Value) {
        let object = format!("{LEASES}/{NAME}");
        match (&call.method, call.path.as_str()) {
            (&Method::GET, path) if path == object => match &self.lease {
                Some(lease) => (StatusCode::OK, lease.clone()),
                None => not_found(),
            },
            (&Method::POST, LEASES) => {
                if self.lease.is_some() {
                    return status(StatusCode::CONFLICT, "AlreadyExists");
                }
                (StatusCode::CREATED, self.store(call.body.clone()))
            }
            (&Method::PUT, path) if path == object => {
                if let Some(holder) = self.sneak_in.take() {
                    self.write_holder(Some(&holder), jiff::Timestamp::now());
                }
                let Some(stored) = &self.lease else {
                    return not_found();
                };
                // The real API server: an update naming a resourceVersion other than the stored
                // one is refused. (One naming none would be applied unconditionally: no test
                // allows the elector to send one.)
                if call.version() != stored["metadata"]["resourceVersion"].as_str() {
                    return status(StatusCode::CONFLICT, "Conflict");
                }
                (StatusCode::OK, self.store(call.body.clone()))
            }
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        }
    }
}

fn status(code: StatusCode, reason: &str) -> (StatusCode, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code.as_u16(), "message": reason}),
    )
}

fn not_found() -> (StatusCode, Value) {
    status(StatusCode::NOT_FOUND, "NotFound")
}

/// A client whose requests the shared `server` answers.
fn client(server: Arc<Mutex<Server>>) -> Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        // Requests the silent server received and keeps without answering.
        let mut unanswered = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let bytes = request.into_body().collect().await.unwrap().to_bytes();
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            let call = Call {
                method,
                path,
                body,
                at: Instant::now(),
            };
            let mut server = server.lock().unwrap();
            server.calls.push(call.clone());
            if server.silent {
                unanswered.push(send);
                continue;
            }
            let (code, answer) = server.answer(&call);
            send.send_response(
                Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    Client::new(service, NAMESPACE)
}

fn start(server: &Arc<Mutex<Server>>, identity: &str) -> Election {
    let leases: Api<Lease> = Api::namespaced(client(server.clone()), NAMESPACE);
    Election::start(
        leases,
        Elector::new(identity, NAMESPACE, NAME, Timing::DEFAULT),
        TermEnd::default(),
    )
}

fn calls(server: &Arc<Mutex<Server>>) -> Vec<Call> {
    server.lock().unwrap().calls.clone()
}

fn writes(server: &Arc<Mutex<Server>>) -> Vec<Call> {
    calls(server).into_iter().filter(Call::is_write).collect()
}

fn stored_holder(server: &Arc<Mutex<Server>>) -> Option<String> {
    let server = server.lock().unwrap();
    server.lease.as_ref()?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

/// Every replace names a resourceVersion: none is unconditional.
fn assert_every_replace_is_conditional(server: &Arc<Mutex<Server>>) {
    for call in writes(server) {
        if call.method == Method::PUT {
            assert!(call.version().is_some(), "unconditional write: {call:?}");
        }
    }
}

/// Waits (on the paused clock) until `done` holds, for at most `limit`.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < end, "condition not met within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `future`'s output, or a failed test if it has not resolved within `limit` (paused clock).
async fn within<T>(limit: Duration, what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

const MINUTE: Duration = Duration::from_secs(60);

fn free_lease_at_version_5() -> Arc<Mutex<Server>> {
    let mut server = Server {
        version: 4,
        ..Server::default()
    };
    server.write_holder(None, jiff::Timestamp::now());
    Arc::new(Mutex::new(server))
}

#[tokio::test(start_paused = true)]
async fn acquiring_a_free_lease_sends_the_resource_version_it_read() {
    let server = free_lease_at_version_5();
    let mut election = start(&server, "operator-a");
    assert!(within(MINUTE, "leading", election.acquired()).await);

    let calls = calls(&server);
    assert_eq!(calls[0].method, Method::GET);
    assert_eq!(calls[0].path, format!("{LEASES}/{NAME}"));
    assert_eq!(calls[1].method, Method::PUT);
    assert_eq!(calls[1].version(), Some("5"), "{:?}", calls[1].body);
    assert_eq!(calls[1].holder(), Some("operator-a"));
    assert_eq!(calls[1].body["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(stored_holder(&server).as_deref(), Some("operator-a"));
}

#[tokio::test(start_paused = true)]
async fn a_missing_lease_is_created_and_renewed_every_retry_period_at_the_version_written() {
    let server = Arc::new(Mutex::new(Server::default()));
    let mut election = start(&server, "operator-a");
    assert!(within(MINUTE, "leading", election.acquired()).await);
    tokio::time::sleep(Duration::from_secs(5)).await;

    let writes = writes(&server);
    assert_eq!(writes[0].method, Method::POST);
    assert_eq!(writes[0].holder(), Some("operator-a"));
    assert!(writes.len() >= 3, "{writes:?}");
    for (i, renewal) in writes.iter().enumerate().skip(1) {
        assert_eq!(renewal.method, Method::PUT);
        // Each renewal is conditional on the version the previous write stored.
        assert_eq!(renewal.version(), Some(i.to_string().as_str()));
        assert_eq!(renewal.at - writes[i - 1].at, Duration::from_secs(2));
    }
    assert_eq!(election.role(), Role::Leading);
}

#[tokio::test(start_paused = true)]
async fn a_conflict_leads_to_a_re_read_never_a_forced_write() {
    let server = free_lease_at_version_5();
    // Another candidate's claim lands between our read and our write.
    server.lock().unwrap().sneak_in = Some("operator-b".into());
    let mut election = start(&server, "operator-a");
    wait_until(Duration::from_secs(5), || calls(&server).len() >= 3).await;

    let lines: Vec<(Method, Option<String>)> = calls(&server)
        .iter()
        .take(3)
        .map(|c| (c.method.clone(), c.version().map(str::to_owned)))
        .collect();
    assert_eq!(
        lines,
        [
            (Method::GET, None),
            (Method::PUT, Some("5".into())),
            (Method::GET, None)
        ]
    );
    // The fresh record is b's: a waits it out instead of writing.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(writes(&server).len(), 1, "{:?}", writes(&server));
    assert_eq!(stored_holder(&server).as_deref(), Some("operator-b"));
    assert_eq!(election.role(), Role::Standby);

    // b never renews: 15 s after a saw b's record, on a's own clock, a claims at b's version.
    assert!(within(MINUTE, "leading", election.acquired()).await);
    let claim = writes(&server).pop().unwrap();
    let seen = calls(&server)[2].at;
    assert!(
        claim.at - seen >= Duration::from_secs(15),
        "{:?}",
        claim.at - seen
    );
    assert_eq!(claim.version(), Some("6"));
    assert_every_replace_is_conditional(&server);
}

#[tokio::test(start_paused = true)]
async fn a_standby_waits_out_a_held_lease_on_its_own_clock_whatever_the_holders_clock_says() {
    let hour = jiff::SignedDuration::from_hours(1);
    for renew in [jiff::Timestamp::now() + hour, jiff::Timestamp::now() - hour] {
        let mut server = Server::default();
        server.write_holder(Some("operator-b"), renew);
        let server = Arc::new(Mutex::new(server));
        let mut election = start(&server, "operator-a");
        let first_read = Instant::now();
        assert!(within(MINUTE, "leading", election.acquired()).await);
        let claim = writes(&server).pop().unwrap();
        assert!(
            claim.at - first_read >= Duration::from_secs(15),
            "claimed {:?} after its first read, with renewTime {renew}",
            claim.at - first_read
        );
        assert_eq!(writes(&server).len(), 1);
        assert_eq!(claim.version(), Some("1"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_never_answers_makes_the_leader_step_down_within_its_renew_deadline_and_write_nothing_after()
 {
    let server = free_lease_at_version_5();
    let mut election = start(&server, "operator-a");
    assert!(within(MINUTE, "leading", election.acquired()).await);
    let acquired = writes(&server).last().unwrap().at;
    // From now on the API server receives requests and never answers.
    server.lock().unwrap().silent = true;

    within(MINUTE, "stepping down", election.lost()).await;
    let stepped_down = Instant::now();
    assert_eq!(election.role(), Role::SteppedDown);
    assert!(
        stepped_down <= acquired + Timing::DEFAULT.renew_deadline(),
        "stepped down {:?} after the last successful write",
        stepped_down - acquired
    );
    let hung = writes(&server);
    assert!(
        hung.len() >= 2,
        "it kept trying to renew before its deadline: {hung:?}"
    );
    assert_every_replace_is_conditional(&server);

    // Nothing more reaches the API server, however long the process would still run.
    let before = calls(&server).len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(calls(&server).len(), before);
    assert!(
        calls(&server).iter().all(|c| c.at <= stepped_down),
        "a request after the step-down"
    );
}

#[tokio::test(start_paused = true)]
async fn of_two_candidates_racing_for_a_free_lease_exactly_one_leads() {
    let server = free_lease_at_version_5();
    let mut a = start(&server, "operator-a");
    let mut b = start(&server, "operator-b");
    within(MINUTE, "one leading", async {
        tokio::select! {
            _ = a.acquired() => {},
            _ = b.acquired() => {},
        }
    })
    .await;
    // Long enough for the loser to have tried, and for several renewals.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let roles = [a.role(), b.role()];
    assert!(
        roles == [Role::Leading, Role::Standby] || roles == [Role::Standby, Role::Leading],
        "{roles:?}"
    );
    let leader = if roles[0] == Role::Leading {
        "operator-a"
    } else {
        "operator-b"
    };
    assert_eq!(stored_holder(&server).as_deref(), Some(leader));
    // Every write of the loser was a claim at a version that was already gone.
    assert_every_replace_is_conditional(&server);
}

#[tokio::test(start_paused = true)]
async fn release_replaces_the_lease_at_the_version_held_and_only_while_holding_it() {
    let server = free_lease_at_version_5();
    let mut election = start(&server, "operator-a");
    assert!(within(MINUTE, "leading", election.acquired()).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = server.lock().unwrap().version.to_string();
    election.release().await;
    let release = writes(&server).pop().unwrap();
    assert_eq!(release.method, Method::PUT);
    assert_eq!(release.version(), Some(held.as_str()));
    assert_eq!(release.holder(), None);
    assert_eq!(stored_holder(&server), None);

    // Someone else took the Lease behind this leader's back: the release is refused (409) and
    // nothing else is tried.
    let server = free_lease_at_version_5();
    let mut election = start(&server, "operator-a");
    assert!(within(MINUTE, "leading", election.acquired()).await);
    server
        .lock()
        .unwrap()
        .write_holder(Some("operator-b"), jiff::Timestamp::now());
    let before = writes(&server).len();
    election.release().await;
    assert_eq!(writes(&server).len(), before + 1);
    assert_eq!(stored_holder(&server).as_deref(), Some("operator-b"));

    // A standby has nothing to release.
    let mut server = Server::default();
    server.write_holder(Some("operator-b"), jiff::Timestamp::now());
    let server = Arc::new(Mutex::new(server));
    let election = start(&server, "operator-a");
    wait_until(Duration::from_secs(5), || !calls(&server).is_empty()).await;
    election.release().await;
    assert!(writes(&server).is_empty(), "{:?}", writes(&server));
}

#[tokio::test(start_paused = true)]
async fn the_election_counts_as_alive_while_it_steps_and_not_once_it_has_ended() {
    // A standby reading a held Lease for a minute, through API calls that time out.
    let mut server = Server::default();
    server.write_holder(Some("operator-b"), jiff::Timestamp::now());
    server.silent = true;
    let server = Arc::new(Mutex::new(server));
    let election = start(&server, "operator-a");
    let liveness = election.liveness();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(liveness.is_alive());
    }
    // The task is gone (released): after twice the lease duration the process is not alive.
    election.release().await;
    assert!(liveness.is_alive());
    tokio::time::sleep(Timing::DEFAULT.lease_duration() * 2 + Duration::from_secs(1)).await;
    assert!(!liveness.is_alive());
}

type ClientStandIn = tower::util::BoxService<Request<String>, Response<String>, tower::BoxError>;

/// A service standing for the controller's client behind the fence of `term`: returns it and the
/// requests that got through.
fn fenced(term: &TermEnd) -> (ClientStandIn, Arc<Mutex<Vec<Method>>>) {
    let passed = Arc::new(Mutex::new(Vec::new()));
    let seen = passed.clone();
    let inner = tower::service_fn(move |request: Request<String>| {
        seen.lock().unwrap().push(request.method().clone());
        std::future::ready(Ok::<_, std::convert::Infallible>(Response::new(
            String::new(),
        )))
    });
    let service = tower::ServiceBuilder::new()
        .layer(term.fence())
        .service(inner);
    (tower::util::BoxService::new(service), passed)
}

async fn send(service: &mut ClientStandIn, method: Method) -> Result<(), tower::BoxError> {
    use tower::{Service, ServiceExt};
    let request = Request::builder()
        .method(method)
        .uri("/apis/apps/v1/namespaces/demo/deployments/shop-user")
        .body(String::new())
        .unwrap();
    service.ready().await?.call(request).await.map(drop)
}

#[tokio::test(start_paused = true)]
async fn the_fence_passes_writes_only_while_this_process_leads() {
    let server = free_lease_at_version_5();
    let term = TermEnd::default();
    let (mut client, passed) = fenced(&term);
    // Standing by: reads pass, writes are refused without leaving the process.
    send(&mut client, Method::GET).await.unwrap();
    let refused = send(&mut client, Method::PATCH).await.unwrap_err();
    assert!(refused.is::<NotLeading>(), "{refused}");

    let leases: Api<Lease> = Api::namespaced(self::client(server.clone()), NAMESPACE);
    let mut election = Election::start(
        leases,
        Elector::new("operator-a", NAMESPACE, NAME, Timing::DEFAULT),
        term.clone(),
    );
    assert!(within(MINUTE, "leading", election.acquired()).await);
    send(&mut client, Method::PATCH).await.unwrap();
    send(&mut client, Method::DELETE).await.unwrap();

    // The API server goes silent; the leader steps down; from then on no write gets through.
    server.lock().unwrap().silent = true;
    within(MINUTE, "stepping down", election.lost()).await;
    for method in [Method::PATCH, Method::POST, Method::PUT, Method::DELETE] {
        let refused = send(&mut client, method).await.unwrap_err();
        assert!(refused.is::<NotLeading>(), "{refused}");
    }
    send(&mut client, Method::GET).await.unwrap();
    assert_eq!(
        *passed.lock().unwrap(),
        [Method::GET, Method::PATCH, Method::DELETE, Method::GET]
    );
}
