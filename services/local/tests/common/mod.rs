//! What the tests of `msa-local` share: starting `up` with every component on a port the OS
//! chooses (`--port 0`), finding its components, stopping it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub const LOCAL: &str = env!("CARGO_BIN_EXE_msa-local");

/// A running `msa-local up`. A test that fails before stopping it still does not leave it (and
/// its components, which follow it) behind: dropping it interrupts it.
pub struct Run {
    child: Option<Child>,
    /// Each component's address as `up` printed it: `gateway`, `user-0`, `product-1`, …
    pub addresses: BTreeMap<String, SocketAddr>,
    /// Each component's admin address (`up --auth`), by instance.
    pub admins: BTreeMap<String, SocketAddr>,
    /// The lines it printed after its list of components.
    pub lines: Receiver<String>,
    /// The file its standard error goes to.
    pub errors: PathBuf,
}

impl Run {
    pub fn gateway(&self) -> String {
        self.url("gateway")
    }

    /// `http://` and the address of component `instance`.
    pub fn url(&self, instance: &str) -> String {
        let address = self
            .addresses
            .get(instance)
            .unwrap_or_else(|| panic!("no {instance} in {:?}", self.addresses));
        format!("http://{address}")
    }

    /// `http://` and the admin address of component `instance` (`up --auth`).
    pub fn admin_url(&self, instance: &str) -> String {
        let address = self
            .admins
            .get(instance)
            .unwrap_or_else(|| panic!("no admin address of {instance} in {:?}", self.admins));
        format!("http://{address}")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// What it has written to its standard error so far.
    pub fn said(&self) -> String {
        std::fs::read_to_string(&self.errors).unwrap_or_default()
    }

    /// Its components now running, by instance name: its child processes, each named by the
    /// `MSA_POD_NAME` it was started with.
    pub fn components(&self) -> BTreeMap<String, Component> {
        let parent = self.pid();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return BTreeMap::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let component = Component::of(pid)?;
                (component.parent == parent).then_some(())?;
                let environ = std::fs::read(entry.path().join("environ")).ok()?;
                let name = environ
                    .split(|b| *b == 0)
                    .find_map(|v| v.strip_prefix(b"MSA_POD_NAME="))?;
                Some((String::from_utf8_lossy(name).into_owned(), component))
            })
            .collect()
    }

    /// The process, no longer stopped on drop (the test stops it itself).
    pub fn take(mut self) -> Child {
        self.child.take().expect("taken once")
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            // Kept when the test failed: it says why. (A run taken by the test is the test's to
            // clean up: `signal_and_wait` removes its file.)
            if !std::thread::panicking() {
                let _ = std::fs::remove_file(&self.errors);
            }
        }
    }
}

/// One process, told apart from a later one with the same pid by its start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Component {
    pub pid: u32,
    parent: u32,
    /// Clock ticks after boot (`/proc/<pid>/stat`, field 22).
    started: u64,
}

impl Component {
    fn of(pid: u32) -> Option<Component> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (name) state ppid …`: the name may hold spaces and parentheses.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        if *fields.first()? == "Z" {
            return None; // exited, not yet reaped
        }
        Some(Component {
            pid,
            parent: fields.get(1)?.parse().ok()?,
            started: fields.get(19)?.parse().ok()?,
        })
    }

    /// Whether this very process is still running.
    pub fn is_running(&self) -> bool {
        Component::of(self.pid).is_some_and(|now| now.started == self.started)
    }

    /// The addresses it listens on.
    pub fn listening(&self) -> Vec<SocketAddr> {
        msa_service_kit::testing::listening_addresses(self.pid).unwrap_or_default()
    }
}

/// `msa-local up --port 0` with `extra` flags (and `env`), once it prints that it is running,
/// with the address of each component it printed then. If it exits first, or is not running
/// within 90 s, the test fails with what it said (which names the component that failed and
/// ends with that component's log).
pub fn up(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
    // One file per run, even when a test starts two.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let errors = std::env::temp_dir().join(format!(
        "msa-local-stderr-{}-{}.txt",
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut child = Command::new(LOCAL)
        .args(["up", "--port", "0"])
        .args(extra)
        .arg("--data-dir")
        .arg(data)
        // The event broker (built once, cached; `make unit` sets it already).
        .env("MSA_NATS_SERVER", msa_events::testing::binary())
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&errors).unwrap())
        .spawn()
        .expect("start msa-local");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let said = || std::fs::read_to_string(&errors).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut addresses = BTreeMap::new();
    let mut admins = BTreeMap::new();
    let mut listed = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with("msa is running") => listed = true,
            // The list ends where the data folder is named.
            Ok(line) if listed && line.starts_with("data:") => {
                assert!(addresses.contains_key("gateway"), "{addresses:?}");
                return Run {
                    child: Some(child),
                    addresses,
                    admins,
                    lines,
                    errors,
                };
            }
            // `  user-0     http://127.0.0.1:43567`, and with `--auth`
            // `  user-0     http://127.0.0.1:43567  admin http://127.0.0.2:41234`
            Ok(line) if listed => {
                let words: Vec<&str> = line.split_whitespace().collect();
                // The event broker's line: `  events     nats://127.0.0.1:43568`.
                let parse = |url: &str| -> Option<SocketAddr> {
                    let address = url
                        .strip_prefix("http://")
                        .or_else(|| url.strip_prefix("nats://"))?;
                    Some(address.parse().unwrap_or_else(|e| panic!("{line:?}: {e}")))
                };
                if let [name, url, rest @ ..] = words.as_slice()
                    && let Some(address) = parse(url)
                {
                    addresses.insert((*name).to_owned(), address);
                    if let ["admin", admin] = rest
                        && let Some(admin) = parse(admin)
                    {
                        admins.insert((*name).to_owned(), admin);
                    }
                }
            }
            Ok(_) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // Its output closed: it is exiting.
                let exit = Instant::now() + Duration::from_secs(30);
                let status = loop {
                    if let Some(status) = child.try_wait().unwrap() {
                        break status.to_string();
                    }
                    if Instant::now() > exit {
                        let _ = child.kill();
                        break "no exit status (killed)".to_owned();
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                panic!(
                    "msa-local up exited ({status}) before it was running; it said:\n{}",
                    said()
                );
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "msa-local up did not report running within 90 s; it said:\n{}",
                    said()
                );
            }
        }
    }
}

/// Ctrl-C, as a person would press it; the run must end cleanly and stop every component.
pub fn interrupt(run: Run) {
    signal_and_wait(run, "-INT");
}

/// Sends `signal` and checks that the run ends cleanly with none of its components left.
pub fn signal_and_wait(run: Run, signal: &str) {
    let components = run.components();
    assert_eq!(
        components.keys().collect::<Vec<_>>(),
        run.addresses.keys().collect::<Vec<_>>(),
        "every component found running before the {signal}"
    );
    let said = run.errors.clone();
    let mut child = run.take();
    Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "msa-local did not stop within 60 s of {signal}; it said:\n{}",
                std::fs::read_to_string(&said).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "clean exit: {status}; it said:\n{}",
        std::fs::read_to_string(&said).unwrap_or_default()
    );
    let left: Vec<&String> = components
        .iter()
        .filter(|(_, c)| c.is_running())
        .map(|(name, _)| name)
        .collect();
    assert!(left.is_empty(), "still running after msa-local: {left:?}");
    let _ = std::fs::remove_file(&said);
}

/// `msa-local demo` against `gateway` (with `--data-dir` when given); it must succeed and print
/// every one of `steps`. Returns what it printed.
pub fn demo(gateway: &str, data_dir: Option<&Path>, steps: &[&str]) -> String {
    let mut command = Command::new(LOCAL);
    command.args(["demo", "--gateway", gateway]);
    if let Some(dir) = data_dir {
        command.arg("--data-dir").arg(dir);
    }
    let output = command.output().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for step in steps {
        assert!(printed.contains(step), "{step} in:\n{printed}");
    }
    printed
}

/// A fresh data folder for test `name`, removed when dropped (also after a failure).
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn new(name: &str) -> Self {
        let data = std::env::temp_dir().join(format!("msa-local-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        DataDir(data)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One test's local run: a fresh data folder, `msa-local up --port 0` with `extra`. Dropped, it
/// stops the run (if the test did not) and removes the data folder, also after a failure.
pub struct Local {
    pub data: PathBuf,
    run: Option<Run>,
    _dir: DataDir,
}

impl Local {
    pub fn start(name: &str, extra: &[&str]) -> Self {
        Self::start_with_env(name, extra, &[])
    }

    /// [`Local::start`] with more environment variables for `msa-local up` and its components.
    pub fn start_with_env(name: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = DataDir::new(name);
        let run = up(&dir.0, extra, env);
        Local {
            data: dir.0.clone(),
            run: Some(run),
            _dir: dir,
        }
    }

    pub fn run(&self) -> &Run {
        self.run.as_ref().expect("running")
    }

    pub fn gateway(&self) -> String {
        self.run().gateway()
    }

    /// `http://` and the address of component `instance` (`user-0`, `order-0`, …).
    pub fn url(&self, instance: &str) -> String {
        self.run().url(instance)
    }

    /// `http://` and the admin address of component `instance` (`up --auth`).
    pub fn admin_url(&self, instance: &str) -> String {
        self.run().admin_url(instance)
    }

    /// Ctrl-C: the run must end cleanly and stop every component.
    pub fn stop(mut self) {
        if let Some(run) = self.run.take() {
            interrupt(run);
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // The run first: its components hold files in the data folder.
        drop(self.run.take());
    }
}
