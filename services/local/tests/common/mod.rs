//! What the tests of `msa-local` share: free ports, starting `up`, stopping it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const LOCAL: &str = env!("CARGO_BIN_EXE_msa-local");

/// A base port with the five after it free.
pub fn free_ports() -> u16 {
    for _ in 0..50 {
        let base = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if base < 60_000
            && (0..6).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
    panic!("no six free ports in a row");
}

/// A running `msa-local up`. A test that fails before stopping it still does not leave it (and
/// its components, which follow it) behind: dropping it interrupts it.
pub struct Run(Option<Child>);

impl Run {
    /// The process, no longer stopped on drop (the test stops it itself).
    pub fn take(mut self) -> Child {
        self.0.take().expect("taken once")
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `msa-local up` with `extra` flags once it prints that it is running, with the lines it
/// prints after that, and the file its standard error goes to.
pub fn up(
    port: u16,
    data: &Path,
    extra: &[&str],
) -> (Run, std::sync::mpsc::Receiver<String>, PathBuf) {
    up_with_env(port, data, extra, &[])
}

/// [`up`] with more environment variables (the `OTEL_*` ones, for example).
pub fn up_with_env(
    port: u16,
    data: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Run, std::sync::mpsc::Receiver<String>, PathBuf) {
    // One file per run, even when a test starts two on the same port.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let errors = std::env::temp_dir().join(format!(
        "msa-local-stderr-{port}-{}-{}.txt",
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut child = Command::new(LOCAL)
        .args(["up", "--port", &port.to_string()])
        .args(extra)
        .arg("--data-dir")
        .arg(data)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&errors).unwrap())
        .spawn()
        .expect("start msa-local");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("msa is running") => {
                return (Run(Some(child)), rx, errors);
            }
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("msa-local up did not report running within 90 s");
            }
        }
    }
}

/// Ctrl-C, as a person would press it; the run must end cleanly and free every port.
pub fn interrupt(run: Run, port: u16) {
    signal_and_wait(run, "-INT", port);
}

/// Sends `signal` and checks that the run ends cleanly and every port is free.
pub fn signal_and_wait(run: Run, signal: &str, port: u16) {
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
        assert!(
            Instant::now() < deadline,
            "msa-local did not stop on {signal}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "clean exit: {status}");
    for i in 0..5 {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port + i)).is_ok(),
            "port {} freed",
            port + i
        );
    }
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

/// One test's local run: a fresh data folder, free ports, `msa-local up` with `extra`. Dropped,
/// it stops the run (if the test did not) and removes the data folder, also after a failure.
pub struct Local {
    pub port: u16,
    pub data: PathBuf,
    run: Option<Run>,
}

impl Local {
    pub fn start(name: &str, extra: &[&str]) -> Self {
        Self::start_with_env(name, extra, &[])
    }

    /// [`Local::start`] with more environment variables for `msa-local up` and its components.
    pub fn start_with_env(name: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let data = std::env::temp_dir().join(format!("msa-local-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let port = free_ports();
        let (run, _lines, _errors) = up_with_env(port, &data, extra, env);
        Local {
            port,
            data,
            run: Some(run),
        }
    }

    pub fn gateway(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Ctrl-C: the run must end cleanly and free every port.
    pub fn stop(mut self) {
        if let Some(run) = self.run.take() {
            interrupt(run, self.port);
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        drop(self.run.take());
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
