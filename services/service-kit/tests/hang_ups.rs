//! A client that hangs up abandons its answer, never the work (issue 27): the handler runs to
//! its end in its own task with its request's context, a drain waits for it, and a panic is
//! still a 500 problem. End to end on 127.0.0.1 over raw TCP.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use msa_service_kit::config::{LimitArgs, ServeArgs};
use msa_service_kit::context::RequestContext;
use msa_service_kit::server::Ops;
use msa_service_kit::testing::{
    expect_problem, loopback_client, loopback_get, serve_args, spawn_with,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};

/// What the handler of `/work` reports: it started, finished, or was dropped half-way; with the
/// request id its context carried at that point.
#[derive(Debug, PartialEq, Eq)]
enum Report {
    Started(Option<String>),
    Finished(Option<String>),
    Dropped,
}

fn request_id() -> Option<String> {
    RequestContext::current()
        .request_id
        .and_then(|id| id.to_str().ok().map(str::to_owned))
}

/// Reports `Dropped` unless defused, so a handler cut short says so.
struct Tripwire {
    reports: mpsc::UnboundedSender<Report>,
    defused: bool,
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        if !self.defused {
            let _ = self.reports.send(Report::Dropped);
        }
    }
}

/// `/work` starts, waits for a permit of `release`, then finishes; `/panic` panics.
fn api(release: Arc<Semaphore>, reports: mpsc::UnboundedSender<Report>) -> Router {
    Router::new()
        .route(
            "/work",
            get(move || {
                let (release, reports) = (release.clone(), reports.clone());
                async move {
                    let mut tripwire = Tripwire {
                        reports: reports.clone(),
                        defused: false,
                    };
                    let _ = reports.send(Report::Started(request_id()));
                    release.acquire().await.expect("never closed").forget();
                    tripwire.defused = true;
                    let _ = reports.send(Report::Finished(request_id()));
                    "done"
                }
            }),
        )
        .route(
            "/panic",
            get(|| async {
                if request_id().is_some() {
                    panic!("a handler bug");
                }
                "unreachable"
            }),
        )
}

/// One connection at a time, so a second connection is served only once the server is done
/// with the first: that is how the test knows the server saw the hang-up.
fn one_connection() -> ServeArgs {
    ServeArgs {
        limits: LimitArgs {
            max_connections: 1,
            ..LimitArgs::default()
        },
        ..serve_args()
    }
}

async fn next(reports: &mut mpsc::UnboundedReceiver<Report>) -> Report {
    tokio::time::timeout(Duration::from_secs(10), reports.recv())
        .await
        .expect("the handler reports within 10 s")
        .expect("the handler's channel is open")
}

/// Sends `GET /work` with request id `id` over a raw connection, waits until the handler has
/// started, and hangs up.
async fn start_work_and_hang_up(
    base: &str,
    id: &str,
    reports: &mut mpsc::UnboundedReceiver<Report>,
) {
    let address = base.strip_prefix("http://").expect("an http base URL");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the loopback server");
    let request = format!("GET /work HTTP/1.1\r\nhost: {address}\r\nx-request-id: {id}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    assert_eq!(next(reports).await, Report::Started(Some(id.to_owned())));
    drop(stream);
}

/// Another request on a new connection; with one connection allowed it is answered only after
/// the server has closed the one that hung up.
async fn server_is_done_with_the_hung_up_connection(base: &str) {
    assert_eq!(
        loopback_get(base, "/healthz").await.status(),
        200,
        "a second connection is served once the first is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_goes_on_after_the_client_hangs_up_with_its_request_context() {
    let (release, (reports_tx, mut reports)) =
        (Arc::new(Semaphore::new(0)), mpsc::unbounded_channel());
    let ops = Ops::new("kit", "test", "kit-0".into(), None);
    let (base, _server) = spawn_with(
        api(release.clone(), reports_tx),
        ops,
        &one_connection(),
        std::future::pending(),
    )
    .await;

    start_work_and_hang_up(&base, "hung-up-1", &mut reports).await;
    server_is_done_with_the_hung_up_connection(&base).await;
    release.add_permits(1);
    assert_eq!(
        next(&mut reports).await,
        Report::Finished(Some("hung-up-1".into())),
        "the handler ran to its end, in its request's context"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_waits_for_work_whose_client_hung_up() {
    let (release, (reports_tx, mut reports)) =
        (Arc::new(Semaphore::new(0)), mpsc::unbounded_channel());
    let ops = Ops::new("kit", "test", "kit-0".into(), None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (base, mut server) = spawn_with(
        api(release.clone(), reports_tx),
        ops.clone(),
        &one_connection(),
        async {
            let _ = stopped.await;
        },
    )
    .await;

    start_work_and_hang_up(&base, "hung-up-2", &mut reports).await;
    server_is_done_with_the_hung_up_connection(&base).await;
    stop.send(()).expect("the server is running");
    // Every connection is gone, but the work is not: the server keeps waiting (up to its grace).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut server)
            .await
            .is_err(),
        "the server stopped while a request's work was still running"
    );
    assert_eq!(ops.work.running(), 1);
    release.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops once the work is done")
        .expect("the server task does not panic")
        .expect("the server stops cleanly");
    assert_eq!(
        reports.try_recv(),
        Ok(Report::Finished(Some("hung-up-2".into()))),
        "the work finished before the server stopped"
    );
}

/// Work outlives its connection, so a client that sends and hangs up in a loop could pile it
/// up without bound: past `--max-requests-in-flight` (2 here) a request gets 503 at once and
/// starts nothing, while `/healthz` still answers; once the work ends, requests are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_up_work_is_capped_and_liveness_still_answers() {
    let (release, (reports_tx, mut reports)) =
        (Arc::new(Semaphore::new(0)), mpsc::unbounded_channel());
    let ops = Ops::new("kit", "test", "kit-0".into(), None);
    let args = ServeArgs {
        limits: LimitArgs {
            max_requests_in_flight: 2,
            ..LimitArgs::default()
        },
        ..serve_args()
    };
    let (base, _server) = spawn_with(
        api(release.clone(), reports_tx),
        ops.clone(),
        &args,
        std::future::pending(),
    )
    .await;

    start_work_and_hang_up(&base, "hung-up-a", &mut reports).await;
    start_work_and_hang_up(&base, "hung-up-b", &mut reports).await;
    assert_eq!(ops.work.running(), 2);
    let refused = loopback_get(&base, "/work").await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let problem = expect_problem(refused, 503).await;
    assert!(
        problem["type"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/overloaded"),
        "{problem}"
    );
    assert_eq!(
        loopback_get(&base, "/healthz").await.status(),
        200,
        "liveness answers at the cap"
    );
    assert!(
        reports.try_recv().is_err(),
        "the refused request started nothing"
    );

    release.add_permits(3);
    for _ in 0..2 {
        assert!(matches!(next(&mut reports).await, Report::Finished(_)));
    }
    tokio::time::timeout(Duration::from_secs(10), ops.work.finished())
        .await
        .expect("the hung-up work ends once released");
    assert_eq!(
        loopback_get(&base, "/work").await.status(),
        200,
        "served again below the cap"
    );
}

#[tokio::test]
async fn a_panicking_handler_is_still_a_500_problem() {
    let (reports_tx, _reports) = mpsc::unbounded_channel();
    let ops = Ops::new("kit", "test", "kit-0".into(), None);
    let (base, _server) = spawn_with(
        api(Arc::new(Semaphore::new(0)), reports_tx),
        ops,
        &serve_args(),
        std::future::pending(),
    )
    .await;
    let response = loopback_client()
        .get(format!("{base}/panic"))
        .send()
        .await
        .expect("an answer");
    let problem = expect_problem(response, 500).await;
    assert_eq!(problem["type"], "https://msa.dev/problems/internal");
    // And the server goes on serving.
    assert_eq!(
        loopback_client()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("an answer")
            .status(),
        200
    );
}
