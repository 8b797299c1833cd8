//! Helpers for the services' route tests: a fresh database on each backend, and the service
//! served in-process on 127.0.0.1 with the same middleware as the binary.
//!
//! PostgreSQL comes from `MSA_TEST_POSTGRES_URL` (an admin URL; `make unit` sets it). Unset —
//! a plain `cargo test` in a fresh clone — the first PostgreSQL test runs `hack/postgres.sh up`,
//! which starts Debian's PostgreSQL on 127.0.0.1 with a random superuser password (it stays
//! running for the next run; installing the package is left to the developer) or finds the one
//! it started before, and says so once on stderr with how to stop it. Each test gets a
//! database of its own.

use std::net::SocketAddr;

use axum::Router;

use crate::config::ServeArgs;
use crate::server::{self, Ops};

#[derive(Clone, Copy, Debug)]
pub enum TestBackend {
    Sqlite,
    Postgres,
}

/// A URL for a new, empty database on `backend`.
pub async fn fresh_database(backend: TestBackend, service: &str) -> String {
    match backend {
        TestBackend::Sqlite => {
            let dir =
                std::env::temp_dir().join(format!("msa-test-{service}-{}", uuid::Uuid::new_v4()));
            format!("sqlite://{}", dir.join(format!("{service}.db")).display())
        }
        TestBackend::Postgres => {
            let admin = postgres_admin_url();
            assert!(
                admin.contains("@127.0.0.1:") || admin.contains("@localhost:"),
                "tests use a loopback PostgreSQL only"
            );
            let name = format!("{service}_{}", uuid::Uuid::new_v4().simple());
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(&admin)
                .await
                .expect("connect to the test PostgreSQL");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&pool)
                .await
                .expect("create a test database");
            pool.close().await;
            let base = admin
                .rsplit_once('/')
                .map_or(admin.as_str(), |(base, _)| base);
            format!("{base}/{name}")
        }
    }
}

/// The test PostgreSQL's admin URL: `MSA_TEST_POSTGRES_URL`, else the one `hack/postgres.sh up`
/// starts (once per test process).
fn postgres_admin_url() -> String {
    static STARTED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Ok(url) = std::env::var("MSA_TEST_POSTGRES_URL") {
        return url;
    }
    STARTED
        .get_or_init(|| {
            let script =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hack/postgres.sh");
            // Straight to the terminal: libtest would hold an eprintln! back until a failure.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"MSA_TEST_POSTGRES_URL is not set: starting a loopback PostgreSQL for the \
                  PostgreSQL variants with `hack/postgres.sh up` (stop it with `hack/postgres.sh \
                  down`; `make unit` starts and stops its own)\n",
            );
            let output = std::process::Command::new(&script)
                .arg("up")
                // Left running for the next run: logins need the password (in the URL).
                .env("MSA_PG_PASSWORD_AUTH", "1")
                .env("MSA_PG_NO_INSTALL", "1")
                .stderr(std::process::Stdio::inherit())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            let url = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            assert!(
                output.status.success() && !url.is_empty(),
                "`hack/postgres.sh up` failed ({}); set MSA_TEST_POSTGRES_URL to a loopback \
                 PostgreSQL's admin URL instead",
                output.status
            );
            url
        })
        .clone()
}

/// Serve args for tests: loopback, small body limit, short grace.
pub fn serve_args() -> ServeArgs {
    ServeArgs {
        listen: "127.0.0.1:0".parse().expect("loopback"),
        admin_listen: None,
        cors_origins: vec![],
        cors_allow_credentials: false,
        body_limit_bytes: 64 * 1024,
        shutdown_grace_seconds: 5,
        drain_delay_seconds: None,
        log_format: "text".into(),
        instance: Some("test".into()),
        limits: crate::config::LimitArgs::default(),
        auth: crate::config::AuthArgs::default(),
        service_identity: crate::config::ServiceIdentityArgs::default(),
    }
}

/// Serves `api` (with every shared layer) on an ephemeral loopback port; returns its base URL.
pub async fn spawn(api: Router, ops: Ops) -> String {
    spawn_with(api, ops, &serve_args(), std::future::pending())
        .await
        .0
}

/// Like `spawn`, with these settings, until `shutdown` resolves; returns the base URL and the
/// server's task (which ends when the drain is over).
pub async fn spawn_with(
    api: Router,
    ops: Ops,
    args: &ServeArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (String, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let app = server::app(api, ops.clone(), args).expect("build the app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    let server = tokio::spawn(server::serve(
        listener,
        app,
        None,
        ops,
        args.drain(0),
        args.connection_limits(),
        shutdown,
    ));
    (format!("http://{addr}"), server)
}

/// A service on a fresh database of `backend`, served in-process; returns a client for it and
/// the database (for checking what was stored).
pub async fn start_service(
    backend: TestBackend,
    name: &'static str,
    migrator: &'static sqlx::migrate::Migrator,
    api: impl FnOnce(crate::db::Database) -> Router,
) -> (TestClient, crate::db::Database) {
    let url = fresh_database(backend, name).await;
    let db = crate::db::Database::connect(&url, migrator)
        .await
        .expect("connect and migrate");
    let ops = Ops::new(name, "test", format!("{name}-0"), Some(db.clone()));
    let base = spawn(api(db.clone()), ops).await;
    (TestClient::new(base), db)
}

/// Runs one route-test scenario on SQLite and on PostgreSQL, as two tests.
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test]
                async fn sqlite() {
                    super::$scenario($crate::testing::TestBackend::Sqlite).await;
                }
                #[tokio::test]
                async fn postgres() {
                    super::$scenario($crate::testing::TestBackend::Postgres).await;
                }
            }
        )*
    };
}

/// Sends `GET url` for each `(base, path, status)` and insists on that status (which routes an
/// address serves, and which it refuses).
pub async fn expect_statuses(cases: &[(&str, &str, u16)]) {
    let client = loopback_client();
    for (base, path, expected) in cases {
        let url = format!("{base}{path}");
        let status = client
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .status()
            .as_u16();
        assert_eq!(status, *expected, "GET {url}");
    }
}

/// An HTTP client for tests: talks to the loopback address it is given, never through a proxy
/// from the environment.
pub fn loopback_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client")
}

/// `GET {base}{path}` from the [`loopback_client`], answered within 10 s or the test fails
/// (naming the URL): a bound on every wait, however busy the machine.
pub async fn loopback_get(base: &str, path: &str) -> reqwest::Response {
    let url = format!("{base}{path}");
    loopback_client()
        .get(&url)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url} was not answered within 10 s: {e}"))
}

/// The TCP addresses process `pid` listens on, as the kernel lists them (see `msa_listening`).
pub use msa_listening::addresses as listening_addresses;

/// An address on `host` that refuses connections for as long as the returned socket lives: the
/// socket holds the port (bound, never listening), so no other process can take it meanwhile.
pub fn refusing_address(host: &str) -> (tokio::net::TcpSocket, SocketAddr) {
    let ip: std::net::IpAddr = host.parse().expect("an IP address");
    let socket = if ip.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .expect("a socket");
    socket
        .bind(SocketAddr::new(ip, 0))
        .expect("bind a loopback port");
    let addr = socket.local_addr().expect("its address");
    (socket, addr)
}

/// What a child process writes to its standard error, kept for the test (and forwarded to the
/// test's own output, which the harness shows when the test fails).
#[derive(Clone, Default)]
struct Captured {
    state: std::sync::Arc<std::sync::Mutex<CapturedState>>,
}

#[derive(Default)]
struct CapturedState {
    lines: std::collections::VecDeque<String>,
    closed: bool,
}

impl Captured {
    /// Lines kept, the oldest dropped first.
    const KEPT: usize = 20_000;

    fn follow(stream: impl std::io::Read + Send + 'static, name: String) -> Self {
        let captured = Captured::default();
        let state = captured.state.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("[{name}] {line}");
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                if state.lines.len() == Self::KEPT {
                    state.lines.pop_front();
                }
                state.lines.push_back(line);
            }
            state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        });
        captured
    }

    fn text(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = Vec::from_iter(state.lines.iter().map(String::as_str)).join("\n");
        text.push('\n');
        text
    }

    /// The last `n` lines, once the writer has closed its end (it exited; waits up to 2 s).
    fn tail_after_exit(&self, n: usize) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !self.state.lock().unwrap_or_else(|e| e.into_inner()).closed
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.tail(n)
    }

    /// The last `n` lines so far.
    fn tail(&self, n: usize) -> String {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let skip = state.lines.len().saturating_sub(n);
        Vec::from_iter(state.lines.iter().skip(skip).map(String::as_str)).join("\n")
    }
}

/// A binary run as a real process on loopback, for restart, shutdown and proxy tests. It binds
/// the address it is given, port 0 by default: the OS chooses the port, and the test learns it
/// from the kernel ([`listening_addresses`]), never by probing for a free one. A process that
/// exits before it listens fails the test with its exit status and the end of its log. Stopped
/// with SIGTERM (as Kubernetes does) by [`ServiceProcess::stop`], killed on drop.
pub struct ServiceProcess {
    child: std::process::Child,
    /// The address it serves on.
    pub addr: SocketAddr,
    /// `http://` and [`Self::addr`].
    pub base_url: String,
    stderr: Captured,
}

/// How long a process may take to listen and become ready.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

impl ServiceProcess {
    /// Starts `binary` with `args` and `env` on a port of 127.0.0.1 the OS chooses, and waits
    /// (up to 30 s) until `/readyz` answers 200.
    pub async fn start(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_at(binary, SocketAddr::from(([127, 0, 0, 1], 0)), args, env).await
    }

    /// Like `start`, listening on `listen` (port 0: a port the OS chooses on that address).
    pub async fn start_at(
        binary: &str,
        listen: SocketAddr,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = std::process::Command::new(binary);
        command
            .args(["--listen", &listen.to_string(), "--log-format", "text"])
            .args(args)
            .envs(env.iter().copied());
        Self::launch(command, listen).await
    }

    /// Runs `command`, which must listen on `listen` and serve `/readyz` there, and waits until
    /// it is ready. With port 0 in `listen` the process must listen on exactly one port of that
    /// IP (put any other listener of it on another loopback address). Readiness is asked only
    /// once the kernel shows this very process listening, so no other process can answer for
    /// it. Its standard error is kept (see [`Self::stop_with_log`]).
    pub async fn launch(command: std::process::Command, listen: SocketAddr) -> Self {
        Self::try_launch(command, listen)
            .await
            .unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// [`Self::launch`], with a process that exits early or is not ready within 30 s as an
    /// error (what happened, and the end of its log) instead of a failed test: for a test that
    /// starts something again on a fixed address and retries if it is taken.
    pub async fn try_launch(
        mut command: std::process::Command,
        listen: SocketAddr,
    ) -> Result<Self, String> {
        let program = command.get_program().to_string_lossy().into_owned();
        let name = std::path::Path::new(&program)
            .file_name()
            .map_or(program.clone(), |n| n.to_string_lossy().into_owned());
        let mut child = command
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let stderr = Captured::follow(child.stderr.take().expect("piped"), name);
        let mut process = ServiceProcess {
            child,
            addr: listen,
            base_url: String::new(),
            stderr,
        };
        let deadline = std::time::Instant::now() + READY_WITHIN;
        process.addr = loop {
            process.exited(&program, &format!("listening on {listen}"))?;
            let found = process.listening_on(listen);
            match found.as_slice() {
                [addr] => break *addr,
                [] => {}
                several => {
                    return Err(format!(
                        "{program} listens on several ports of {}: {several:?}; give the others another loopback address",
                        listen.ip()
                    ));
                }
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "{program} did not listen on {listen} within {READY_WITHIN:?}; its log:\n{}",
                    process.stderr.tail(40)
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        process.base_url = format!("http://{}", process.addr);
        let client = loopback_client();
        loop {
            if let Ok(response) = client
                .get(format!("{}/readyz", process.base_url))
                .send()
                .await
                && response.status().is_success()
            {
                return Ok(process);
            }
            process.exited(&program, "becoming ready")?;
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "{program} listened on {} but was not ready within {READY_WITHIN:?}; its log:\n{}",
                    process.addr,
                    process.stderr.tail(40)
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Its listening addresses that match `listen` (any port of its IP when the port is 0).
    fn listening_on(&self, listen: SocketAddr) -> Vec<SocketAddr> {
        let all = listening_addresses(self.child.id()).unwrap_or_default();
        all.into_iter()
            .filter(|a| a.ip() == listen.ip() && (listen.port() == 0 || a.port() == listen.port()))
            .collect()
    }

    /// An error naming its exit status and the end of its log, if it has exited.
    fn exited(&mut self, program: &str, before: &str) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(format!(
                "{program} exited with {status} before {before}; its log:\n{}",
                self.stderr.tail_after_exit(40)
            )),
            _ => Ok(()),
        }
    }

    /// Every address it listens on now (its API's, and its admin address if it has one).
    pub fn listening(&self) -> Vec<SocketAddr> {
        listening_addresses(self.child.id()).unwrap_or_default()
    }

    /// Sends SIGTERM and returns at once (the process drains on its own).
    pub fn terminate(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// SIGTERM, then waits (up to a minute) for the process to exit; returns whether it exited
    /// cleanly (a process still running after a minute is killed, and did not).
    pub fn stop(self) -> bool {
        self.stop_with_log().0
    }

    /// [`Self::stop`], and everything it wrote to its standard error, to the end.
    pub fn stop_with_log(mut self) -> (bool, String) {
        let clean = self.wait_after_terminate();
        let _ = self.stderr.tail_after_exit(0);
        (clean, self.stderr.text())
    }

    fn wait_after_terminate(&mut self) -> bool {
        self.terminate();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                _ => return false,
            }
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads from `stream` until the peer closes it or `within` passes: what arrived, and whether
/// the peer closed (as opposed to the time running out).
pub async fn read_until_closed(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    within: std::time::Duration,
) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return (received, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (received, true),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Reads one whole HTTP/1.1 response (head and `content-length` body) within `within`; what
/// was read when the stream closed or time ran out otherwise.
pub async fn read_response(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    within: std::time::Duration,
) -> String {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + within;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let answer = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = answer.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return answer;
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buffer[..n]),
            _ => return answer,
        }
    }
}

/// A JSON client for one service under test.
#[derive(Clone)]
pub struct TestClient {
    pub base: String,
    pub http: reqwest::Client,
}

impl TestClient {
    pub fn new(base: String) -> Self {
        TestClient {
            base,
            http: loopback_client(),
        }
    }

    /// Sends `method path` with an optional JSON body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let mut request = self.http.request(
            method.parse().expect("an HTTP method"),
            format!("{}{path}", self.base),
        );
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("the service answers")
    }

    /// Sends `method path` with this exact body text as JSON (for spellings a `Value` would
    /// normalise, such as `19.990000000000001`, or for bodies that are not JSON at all).
    pub async fn send_text(&self, method: &str, path: &str, body: &str) -> reqwest::Response {
        self.http
            .request(
                method.parse().expect("an HTTP method"),
                format!("{}{path}", self.base),
            )
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("the service answers")
    }

    /// Sends and expects `status` with a JSON body, which it returns.
    pub async fn expect(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        status: u16,
    ) -> serde_json::Value {
        let response = self.send(method, path, body).await;
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        response.json().await.expect("a JSON body")
    }

    /// `POST path` of `body`, expecting 201; the new resource's `id`.
    pub async fn create(&self, path: &str, body: serde_json::Value) -> String {
        self.expect("POST", path, Some(body), 201).await["id"]
            .as_str()
            .expect("a created resource has an id")
            .to_owned()
    }
}

/// Asserts a problem+json answer with `status` and a detail, and returns its body.
pub async fn expect_problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "{}", response.url());
    assert_eq!(
        response.headers()["content-type"],
        crate::problem::CONTENT_TYPE
    );
    let body: serde_json::Value = response.json().await.expect("a problem body");
    assert_eq!(body["status"], status);
    assert!(
        !body["detail"].as_str().unwrap_or_default().is_empty(),
        "{body}"
    );
    body
}

/// Starts `replicas` connections to one empty PostgreSQL database at the same moment, each
/// migrating it as a starting replica does, and checks that every one succeeded and each
/// migration was applied exactly once. sqlx's migrator holds a PostgreSQL advisory lock while it
/// migrates (`locking`, on by default); without it, replicas racing to create the bookkeeping
/// table or apply a migration fail or apply it twice.
pub async fn migrate_concurrently(
    migrator: &'static sqlx::migrate::Migrator,
    service: &str,
    replicas: usize,
) {
    assert!(migrator.locking, "{service}: migrations must take the lock");
    let url = fresh_database(TestBackend::Postgres, service).await;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(replicas));
    let starting: Vec<_> = (0..replicas)
        .map(|_| {
            let (url, start) = (url.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                crate::db::Database::connect(&url, migrator).await
            })
        })
        .collect();
    let mut databases = Vec::new();
    for replica in starting {
        let connected = replica.await.expect("a replica's start does not panic");
        databases.push(connected.unwrap_or_else(|e| panic!("{service}: a replica failed: {e:#}")));
    }
    let (applied, distinct): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT version) FROM _sqlx_migrations WHERE success",
    )
    .fetch_one(&databases[0].pool)
    .await
    .expect("read the migration table");
    let expected = i64::try_from(migrator.iter().count()).expect("few migrations");
    assert_eq!(
        (applied, distinct),
        (expected, expected),
        "{service}: each migration applied exactly once"
    );
}

/// A bounded random walk over a service's routes for robustness tests. `routes` are
/// `"METHOD /path/{id}"`; each request takes one, mostly with its own method (else a random or
/// invented one), fills its `{…}` parts from `ids` (existing records), fresh UUIDs or junk, and
/// sends random headers and a random body: mostly a JSON object of `fields` with hostile values,
/// else truncated JSON, raw bytes or nothing. After each request: no 5xx; and when the request was
/// refused (4xx), the rows `snapshot` selects are unchanged. Deterministic per `seed`, which a
/// failure prints.
pub struct FuzzPlan<'a> {
    pub routes: &'a [&'a str],
    pub ids: &'a [String],
    pub fields: &'a [&'a str],
    /// Queries whose rows must not change when a request is refused.
    pub snapshot: &'a [&'a str],
    pub rounds: usize,
    pub seed: u64,
}

pub async fn fuzz_routes(api: &TestClient, db: &crate::db::Database, plan: FuzzPlan<'_>) {
    let FuzzPlan {
        routes,
        ids,
        fields,
        snapshot,
        rounds,
        seed,
    } = plan;
    // MSA_FUZZ_ROUNDS and MSA_FUZZ_SEED run it longer or elsewhere by hand.
    let rounds = std::env::var("MSA_FUZZ_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(rounds);
    let seed = std::env::var("MSA_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(seed);
    let mut rng = Fuzz(seed.max(1));
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut before = table_rows(db, snapshot).await;
    for round in 0..rounds {
        let (own_method, template) = rng
            .pick(routes)
            .split_once(' ')
            .expect("routes are \"METHOD /path\"");
        let method = if rng.below(4) == 0 {
            *rng.pick(&[
                "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW", "PROPFIND",
            ])
        } else {
            own_method
        };
        let path = fill_path(&mut rng, template, ids);
        let mut request = api.http.request(
            method.parse().expect("a method token"),
            format!("{}{path}", api.base),
        );
        match rng.below(8) {
            0 => {}
            1 => request = request.header("content-type", "text/plain"),
            2 => request = request.header("content-type", "application/json; charset=utf-8"),
            _ => request = request.header("content-type", "application/json"),
        }
        if rng.below(3) == 0 {
            // Only what a header value can carry (no control characters besides tab).
            let id: String = rng
                .junk_text(80)
                .chars()
                .filter(|c| *c == '\t' || (' '..='~').contains(c))
                .collect();
            request = request.header("x-request-id", id);
        }
        let body = match rng.below(8) {
            0 => Vec::new(),
            1 => rng.junk_bytes(200),
            2 => {
                let json = rng.json_object(fields, 0).to_string().into_bytes();
                json[..rng.below(json.len() as u64 + 1) as usize].to_vec()
            }
            3 => rng.json_object(fields, 0).to_string().into_bytes(),
            _ => rng.plausible_object(fields, ids).to_string().into_bytes(),
        };
        let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        let response = request
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: {method} {path}: {e}"));
        let status = response.status().as_u16();
        *statuses.entry(status).or_default() += 1;
        assert!(
            status < 500,
            "seed {seed} round {round}: {method} {path} {shown} → {status}: {}",
            response.text().await.unwrap_or_default()
        );
        let after = table_rows(db, snapshot).await;
        if (400..500).contains(&status) {
            assert_eq!(
                before, after,
                "seed {seed} round {round}: the refused {method} {path} {shown} ({status}) changed stored data"
            );
        }
        before = after;
    }
    println!("seed {seed}, {rounds} requests, answers by status: {statuses:?}");
}

fn fill_path(rng: &mut Fuzz, template: &str, ids: &[String]) -> String {
    let mut path = String::new();
    for (i, segment) in template.split('/').enumerate() {
        if i > 0 {
            path.push('/');
        }
        if segment.starts_with('{') {
            path.push_str(&match rng.below(4) {
                0 | 1 if !ids.is_empty() => rng.pick(ids).clone(),
                2 => uuid::Uuid::new_v4().to_string(),
                _ => rng.junk_path_segment(),
            });
        } else {
            path.push_str(segment);
        }
    }
    if rng.below(6) == 0 {
        path.push_str(&format!(
            "?limit={}&offset={}",
            rng.number_text(),
            rng.number_text()
        ));
    }
    path
}

/// Every row `queries` select, as text, for comparing before and after a request.
async fn table_rows(db: &crate::db::Database, queries: &[&str]) -> Vec<Vec<String>> {
    use sqlx::{Column, Row};
    let mut rows = Vec::new();
    for query in queries {
        for row in sqlx::query(query)
            .fetch_all(&db.pool)
            .await
            .expect("a snapshot query")
        {
            rows.push(
                row.columns()
                    .iter()
                    .map(|column| {
                        let i = column.ordinal();
                        row.try_get::<Option<String>, _>(i)
                            .map(|v| format!("{v:?}"))
                            .or_else(|_| row.try_get::<Option<i64>, _>(i).map(|v| format!("{v:?}")))
                            .unwrap_or_else(|e| format!("unreadable: {e}"))
                    })
                    .collect(),
            );
        }
    }
    rows
}

/// xorshift64: reproducible without a dependency.
struct Fuzz(u64);

impl Fuzz {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn junk_bytes(&mut self, max: u64) -> Vec<u8> {
        (0..self.below(max)).map(|_| self.next() as u8).collect()
    }

    /// Text with control, escape, quote, bidi and non-ASCII characters among plain ones.
    fn junk_text(&mut self, max: u64) -> String {
        const PARTS: &[&str] = &[
            "a",
            "Z",
            "0",
            " ",
            "\"",
            "\\",
            "\0",
            "\x1b[31m",
            "\x07",
            "\n",
            "\u{202e}",
            "é",
            "e\u{301}",
            "漢",
            "%00",
            "../",
            "'; DROP TABLE x;--",
            "@",
            ".",
            "{}",
        ];
        (0..self.below(max)).map(|_| *self.pick(PARTS)).collect()
    }

    fn junk_path_segment(&mut self) -> String {
        const SEGMENTS: &[&str] = &[
            "x",
            "0",
            "-1",
            "%2e%2e",
            "..",
            "%00",
            "00000000-0000-0000-0000-000000000000",
            "ZZZZZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZZZZZZZZZ",
            "%F0%9F%92%A9",
            "a%20b",
        ];
        (*self.pick(SEGMENTS)).to_owned()
    }

    fn number_text(&mut self) -> String {
        const NUMBERS: &[&str] = &[
            "0",
            "1",
            "-1",
            "100",
            "101",
            "9223372036854775807",
            "9223372036854775808",
            "1e3",
            "abc",
            "",
        ];
        (*self.pick(NUMBERS)).to_owned()
    }

    fn json_value(&mut self, fields: &[&str], depth: u32) -> serde_json::Value {
        use serde_json::json;
        match self.below(if depth > 2 { 9 } else { 12 }) {
            0 => json!(null),
            1 => json!(self.below(2) == 1),
            2 => json!(*self.pick(&[0i64, 1, -1, 5, 100, i64::MAX, i64::MIN, 1_000_000_001])),
            3 => json!(*self.pick(&[0.5f64, 19.99, -0.01, 1e300, 9.007_199_254_740_993e15])),
            4 => json!(*self.pick(&["1.5", "19.990000000000001", "-3", "999999999999.99", "0.10"])),
            5 => json!(self.junk_text(30)),
            6 => json!(uuid::Uuid::new_v4().to_string()),
            7 => json!("x".repeat(self.below(3000) as usize)),
            8 => json!(*self.pick(&["shipped", "cancelled", "delivered", "confirmed", "lost"])),
            9 => json!(*self.pick(&[
                "a@example.com",
                "A@EXAMPLE.COM",
                "ren\u{e9}@example.com",
                "x@y"
            ])),
            10 => serde_json::Value::Array(
                (0..self.below(4))
                    .map(|_| self.json_object(fields, depth + 1))
                    .collect(),
            ),
            _ => self.json_object(fields, depth + 1),
        }
    }

    /// Each of `fields` at most once, with a value of a plausible kind for its name or a
    /// hostile one: what reaches the handlers rather than the body parser.
    fn plausible_object(&mut self, fields: &[&str], ids: &[String]) -> serde_json::Value {
        use serde_json::json;
        let mut object = serde_json::Map::new();
        for field in fields {
            if self.below(4) == 0 {
                continue;
            }
            let value = if self.below(3) == 0 {
                self.json_value(fields, 1)
            } else {
                match *field {
                    "items" => serde_json::Value::Array(
                        (0..self.below(4))
                            .map(|_| {
                                let product = if ids.is_empty() || self.below(4) == 0 {
                                    uuid::Uuid::new_v4().to_string()
                                } else {
                                    self.pick(ids).clone()
                                };
                                let quantity =
                                    *self.pick(&[1i64, 2, 0, -1, 1_000_000_000, i64::MAX]);
                                json!({"product_id": product, "quantity": quantity})
                            })
                            .collect(),
                    ),
                    "id" | "user_id" | "product_id" if !ids.is_empty() => {
                        json!(self.pick(ids).clone())
                    }
                    "id" | "user_id" | "product_id" => json!(uuid::Uuid::new_v4().to_string()),
                    "price" => json!(*self.pick(&["1.00", "19.99", "0", "1000000000.00"])),
                    "stock" | "quantity" => json!(*self.pick(&[0i64, 1, 7, 1_000_000_000])),
                    "email" => json!(format!("u{}@example.com", self.below(1000))),
                    "status" => json!(*self.pick(&["shipped", "cancelled", "delivered"])),
                    _ => json!(format!("plain {}", self.below(1000))),
                }
            };
            object.insert((*field).to_owned(), value);
        }
        serde_json::Value::Object(object)
    }

    fn json_object(&mut self, fields: &[&str], depth: u32) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        for _ in 0..self.below(fields.len() as u64 + 2) {
            let key = if self.below(8) == 0 {
                self.junk_text(6)
            } else {
                (*self.pick(fields)).to_owned()
            };
            let value = self.json_value(fields, depth);
            object.insert(key, value);
        }
        serde_json::Value::Object(object)
    }
}

/// For figures: runs `one` `count` times, at most `concurrency` at a time, and returns calls per
/// second. Each worker takes the next call when its last one ended, so a slow call holds up
/// only its worker.
pub async fn calls_per_second<F, Fut>(count: usize, concurrency: usize, one: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    let taken = std::sync::Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (one, taken) = (one.clone(), taken.clone());
            tokio::spawn(async move {
                while taken.fetch_add(1, Ordering::Relaxed) < count {
                    one().await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a call panicked");
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// For figures (issue 27): `POST /orders` of `order` through `client`, in rounds of `per_round`
/// placed `concurrency` at a time, alternating without and with a fresh `Idempotency-Key` so
/// background load hits both alike, after a warm-up round. Every order must be answered 201.
/// Returns the median orders per second without and with a key.
pub async fn orders_per_second_without_and_with_keys(
    client: &TestClient,
    order: &serde_json::Value,
    per_round: usize,
    concurrency: usize,
    rounds: usize,
) -> (f64, f64) {
    let round = |keyed: bool| {
        let (client, order) = (client.clone(), order.clone());
        calls_per_second(per_round, concurrency, move || {
            let (client, order) = (client.clone(), order.clone());
            async move {
                let mut request = client
                    .http
                    .post(format!("{}/orders", client.base))
                    .json(&order);
                if keyed {
                    request = request.header("idempotency-key", uuid::Uuid::new_v4().to_string());
                }
                let answer = request.send().await.expect("the service answers");
                assert_eq!(answer.status().as_u16(), 201, "an order placed");
            }
        })
    };
    round(false).await; // warm-up: connections, caches
    let (mut plain, mut keyed) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        plain.push(round(false).await);
        keyed.push(round(true).await);
    }
    (median(plain), median(keyed))
}

/// For figures: the median of rounds (the upper one of an even count).
pub fn median(mut rounds: Vec<f64>) -> f64 {
    rounds.sort_by(f64::total_cmp);
    rounds.get(rounds.len() / 2).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_sees_the_port_the_os_gave_its_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (_held, refusing) = refusing_address("127.0.0.1");
        let found = listening_addresses(std::process::id()).unwrap();
        assert!(found.contains(&addr), "{addr} in {found:?}");
        assert!(
            !found.contains(&refusing),
            "a bound socket that does not listen is not listed"
        );
        assert!(
            std::net::TcpStream::connect(refusing).is_err(),
            "nothing answers at {refusing}"
        );
        drop(listener);
        let found = listening_addresses(std::process::id()).unwrap();
        assert!(!found.contains(&addr), "closed: {found:?}");
    }
}
