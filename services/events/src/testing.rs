//! A real `nats-server` for tests (feature `testing`): JetStream on, `sync_interval: always`,
//! data in a folder of its own, listening on a port of 127.0.0.1 the OS chooses (learned from
//! the kernel, never probed). It can be stopped, started again on the same address with the same
//! data, paused (SIGSTOP: a broker that stops answering) and resumed. Killed on drop.
//!
//! The binary is `$MSA_NATS_SERVER`, else what `hack/tools.sh nats-server` builds (once, cached
//! under ~/.cache/msa/tools).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::envelope::CloudEvent;

pub struct NatsServer {
    child: Option<Child>,
    dir: PathBuf,
    /// Where it listens (fixed after the first start).
    pub addr: SocketAddr,
    /// Extra configuration (accounts, users), kept across restarts.
    extra: String,
    /// Environment of the server process (variables its configuration refers to).
    env: Vec<(String, String)>,
}

/// The path of the `nats-server` binary (built at most once per test process).
pub fn binary() -> String {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(find_binary).clone()
}

fn find_binary() -> String {
    if let Ok(path) = std::env::var("MSA_NATS_SERVER") {
        return path;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../hack/tools.sh");
    let output = Command::new("bash")
        .args([script, "nats-server"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run hack/tools.sh nats-server");
    assert!(output.status.success(), "hack/tools.sh nats-server failed");
    String::from_utf8(output.stdout)
        .expect("a path")
        .trim()
        .to_owned()
}

impl NatsServer {
    /// Starts a server with nothing but JetStream.
    pub async fn start() -> NatsServer {
        NatsServer::start_with("").await
    }

    /// Starts a server whose configuration also holds `extra` (accounts, authorization).
    pub async fn start_with(extra: &str) -> NatsServer {
        NatsServer::start_with_environment(extra, Vec::new()).await
    }

    /// A server configured as the operator configures an app's broker: the `authorization`
    /// block naming each password as an environment variable, and those variables set from
    /// `credentials` (each login's password).
    pub async fn start_as_operator_configures(
        app: &str,
        credentials: &[crate::broker::Credential],
    ) -> NatsServer {
        let env = credentials
            .iter()
            .map(|c| {
                (
                    crate::broker::password_variable(&c.service),
                    c.password.clone(),
                )
            })
            .collect();
        NatsServer::start_with_environment(&crate::broker::authorization_from_environment(app), env)
            .await
    }

    /// Like [`NatsServer::start_with`], the server's process also given `env` (the variables a
    /// configuration such as the operator's refers to).
    pub async fn start_with_environment(extra: &str, env: Vec<(String, String)>) -> NatsServer {
        let dir = std::env::temp_dir().join(format!("msa-nats-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("a folder for the server");
        let mut server = NatsServer {
            child: None,
            dir,
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            extra: extra.to_owned(),
            env,
        };
        server.launch().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    async fn launch(&mut self) {
        let port = if self.addr.port() == 0 {
            "-1".to_owned()
        } else {
            self.addr.port().to_string()
        };
        let config = format!(
            "host: 127.0.0.1\nport: {port}\n\
             jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n{}\n",
            self.dir.join("jetstream").display(),
            self.extra
        );
        let file = self.dir.join("nats.conf");
        std::fs::write(&file, config).expect("write the server's configuration");
        let log = std::fs::File::create(self.dir.join("nats.log")).expect("a log file");
        let child = Command::new(binary())
            .args(["-c", &file.to_string_lossy()])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Some(addr) = msa_listening::on(pid, self.addr.ip()) {
                break addr;
            }
            assert!(
                !msa_listening::exited(pid) && Instant::now() < deadline,
                "nats-server did not listen within 30 s; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.addr = addr;
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
    }

    /// Kills it (SIGKILL: no goodbye to clients, nothing flushed that was not already).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same address with the same data.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }

    /// SIGSTOP: connections stay open and nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// A JetStream context as an administrator of the default account.
    pub async fn jetstream(&self) -> jetstream::Context {
        let client = async_nats::connect(self.url())
            .await
            .expect("connect to NATS");
        jetstream::new(client)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A message of a stream: its `Nats-Msg-Id` and envelope.
#[derive(Debug)]
pub struct Stored {
    pub msg_id: String,
    pub subject: String,
    pub event: CloudEvent,
}

/// Every message of stream `name`, in stream order (waits up to 10 s for the stream to exist).
pub async fn read_stream(context: &jetstream::Context, name: &str) -> Vec<Stored> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match context.get_stream(name).await {
            Ok(stream) => break stream,
            Err(error) => {
                assert!(Instant::now() < deadline, "stream {name}: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let state = stream.info().await.expect("stream info").state.clone();
    let mut stored = Vec::new();
    for sequence in state.first_sequence..=state.last_sequence {
        if state.messages == 0 {
            break;
        }
        let message = stream
            .get_raw_message(sequence)
            .await
            .unwrap_or_else(|error| panic!("message {sequence} of {name}: {error}"));
        let msg_id = message
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let (event, _) = CloudEvent::parse(&message.payload).expect("a valid envelope");
        stored.push(Stored {
            msg_id,
            subject: message.subject.to_string(),
            event,
        });
    }
    stored
}

/// Every outbox row is in the stream exactly once (by id and by `Nats-Msg-Id`), under
/// `subject_prefix` and from `source`, with each aggregate's events in sequence order 1, 2, 3…
/// without gaps (as far as the outbox still holds them: pruned events are not checked).
pub async fn assert_stream_matches_outbox(
    pool: &sqlx::AnyPool,
    stored: &[Stored],
    subject_prefix: &str,
    source: &str,
) {
    let rows = crate::outbox::all(pool).await.expect("read the outbox");
    let mut ids = std::collections::HashSet::new();
    let mut last = std::collections::HashMap::<String, i64>::new();
    for message in stored {
        assert_eq!(
            message.msg_id, message.event.id,
            "Nats-Msg-Id is not the event id"
        );
        assert!(
            ids.insert(message.event.id.clone()),
            "event {} is in the stream twice",
            message.event.id
        );
        assert!(
            message.subject.starts_with(subject_prefix),
            "{} is not under {subject_prefix}",
            message.subject
        );
        assert_eq!(message.event.source, source);
        let previous = last.insert(message.event.subject.clone(), message.event.sequence);
        assert_eq!(
            message.event.sequence,
            previous.unwrap_or(0) + 1,
            "aggregate {}: event {} follows {previous:?} in the stream",
            message.event.subject,
            message.event.sequence,
        );
    }
    for row in &rows {
        assert!(
            ids.contains(&row.id),
            "event {} ({}) never reached the stream",
            row.id,
            row.event_type
        );
    }
    assert_eq!(
        stored.len(),
        rows.len(),
        "the stream holds events the outbox never had"
    );
}

/// Waits (up to `within`) until the outbox holds no unpublished event.
pub async fn drained(pool: &sqlx::AnyPool, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let backlog = crate::outbox::backlog(pool)
            .await
            .expect("read the backlog");
        if backlog.events == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} events still unpublished after {within:?}",
            backlog.events
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each aggregate's events in the outbox, `(type, data)` in sequence order; checks that they
/// are numbered 1, 2, 3… without gaps.
pub async fn events_by_aggregate(
    pool: &sqlx::AnyPool,
) -> std::collections::HashMap<String, Vec<(String, serde_json::Value)>> {
    let mut events = std::collections::HashMap::<String, Vec<(String, serde_json::Value)>>::new();
    let mut rows = crate::outbox::all(pool).await.expect("read the outbox");
    rows.sort_by(|a, b| (&a.aggregate, a.sequence).cmp(&(&b.aggregate, b.sequence)));
    for row in rows {
        let of_aggregate = events.entry(row.aggregate.clone()).or_default();
        assert_eq!(
            row.sequence,
            of_aggregate.len() as i64 + 1,
            "aggregate {}: a gap in its events",
            row.aggregate
        );
        let data = serde_json::from_str(&row.data).expect("an event's data is JSON");
        of_aggregate.push((row.event_type, data));
    }
    events
}

/// The last event of each aggregate in the outbox, `(type, data)` by aggregate id.
pub async fn last_events(
    pool: &sqlx::AnyPool,
) -> std::collections::HashMap<String, (String, serde_json::Value)> {
    events_by_aggregate(pool)
        .await
        .into_iter()
        .filter_map(|(aggregate, mut events)| events.pop().map(|last| (aggregate, last)))
        .collect()
}
