//! `msa-local up`: start the plan's processes one by one, each once the ones it calls are ready;
//! report where everything is; restart a component that dies (with backoff, see
//! [`crate::restart`]) while the rest keep serving; stop them all (callers first) on Ctrl-C,
//! SIGTERM or SIGHUP (the terminal closing). Each component also watches this process and stops
//! when it is gone (`MSA_EXIT_WITH_PARENT`), so not even a `kill -9` leaves one behind.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::plan::{Launch, Plan, Process, Replicas, Security, Service, order_addresses, plan};
use crate::restart::Restarts;
use crate::{broker, identity};

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Port of the gateway; the services take the ports right after it. 0: every component on
    /// a port the OS chooses (printed once all are ready; a restarted component keeps its own).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Folder of the SQLite files (kept between runs) and the components' logs.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Replicas of the user service (they share its SQLite file).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    user_replicas: u16,
    /// Replicas of the order service.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    order_replicas: u16,
    /// Replicas of the product service.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    product_replicas: u16,
    /// Folder with msa-user, msa-order, msa-product and msa-gateway (default: beside msa-local).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Require bearer tokens (signing up and reading the catalogue stay open): makes a signing
    /// key under the data folder; `msa-local token` issues tokens with it. Also limits each
    /// caller to 20 requests per second unless --rate-limit-per-second says otherwise.
    #[arg(long)]
    auth: bool,
    /// Requests per second each caller (token subject, else address) may make at the gateway.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate_limit_per_second: Option<u32>,
    /// Format of the components' log files (`msa-local logs` reads both).
    #[arg(long, default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
    /// The `nats-server` that carries the services' events (`make local` builds one). Default:
    /// one beside the components, else on the PATH; without one the services still write
    /// their events to their outboxes, and nothing publishes them.
    #[arg(long, env = "MSA_NATS_SERVER")]
    nats_server: Option<PathBuf>,
}

/// The rate limit `up --auth` sets when none is given.
const AUTH_RATE_LIMIT: u32 = 20;

struct Running {
    /// With the address it bound.
    process: Process,
    /// Its flags, with the addresses of the services it calls.
    args: Vec<String>,
    child: Child,
    log: PathBuf,
    restarts: Restarts,
    /// Dead, to be started again at this instant.
    restart_at: Option<Instant>,
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let mut stop = StopSignals::catch()?;
    let bin_dir = args.bin_dir.clone().unwrap_or_else(crate::default_bin_dir);
    let data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("bad data folder {}", args.data_dir.display()))?;
    let replicas = Replicas {
        user: args.user_replicas,
        order: args.order_replicas,
        product: args.product_replicas,
    };
    let security = Security {
        auth: args.auth,
        rate_limit: args
            .rate_limit_per_second
            .or(args.auth.then_some(AUTH_RATE_LIMIT)),
    };
    let mut plan = plan(args.port, replicas, &data_dir, security).map_err(anyhow::Error::msg)?;
    for process in &mut plan.processes {
        process
            .args
            .extend(["--log-format".to_owned(), args.log_format.clone()]);
    }
    let nats_server = broker::find_binary(args.nats_server.as_deref(), &bin_dir);
    let broker_listen = SocketAddr::from((
        std::net::Ipv4Addr::LOCALHOST,
        match args.port {
            0 => 0,
            port => u16::try_from(plan.processes.len())
                .ok()
                .and_then(|n| port.checked_add(n))
                .context("--port leaves no room for the event broker above the services")?,
        },
    ));
    let broker_process = nats_server
        .clone()
        .map(|binary| Process::broker(binary, broker_listen, &broker::config_file(&data_dir)));
    // Before anything is created: a refused start leaves nothing behind.
    preflight(&plan, broker_process.as_ref(), &bin_dir)?;
    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs)
        .with_context(|| format!("cannot create the data folder {}", data_dir.display()))?;
    identity::issue_service_tokens(&data_dir)?;
    // The product service starts before the order service: it must not follow the addresses
    // an earlier run left (another process may listen there now).
    publish_order_addresses(&data_dir, &[])?;
    if args.auth {
        identity::Issuer::users(&data_dir).key()?;
    }

    let mut running: Vec<Running> = Vec::new();
    // The broker first (it is stopped last), then every service learns where it is.
    match broker_process {
        Some(process) => {
            eprint!("starting {:<10} … ", process.instance);
            let credentials = broker::credentials(&data_dir)?;
            let config = broker::config_file(&data_dir);
            identity::write_atomically(
                &config,
                broker::config(&data_dir, process.listen, &credentials).as_bytes(),
                true,
            )?;
            let args = process.args.clone();
            // Its log (nats-server's own format) beside its data, apart from the components' JSON logs
            // that `msa-local logs` merges.
            let started = start(&process, args, &bin_dir, &broker::folder(&data_dir))
                .await
                .inspect_err(|_| {
                    eprintln!("failed");
                })?;
            let listen = started.process.listen;
            eprintln!("ready on {listen}");
            // A restarted broker must come back where the services look for it.
            identity::write_atomically(
                &config,
                broker::config(&data_dir, listen, &credentials).as_bytes(),
                true,
            )?;
            let url = format!("nats://{listen}");
            identity::write_atomically(&broker::url_file(&data_dir), url.as_bytes(), false)?;
            running.push(started);
            if let Err(error) = broker::make_streams(&data_dir, &url).await {
                stop_all(&mut running);
                return Err(error);
            }
            for process in &mut plan.processes {
                if let Some(service) = process.service {
                    process
                        .args
                        .extend(broker::service_args(&data_dir, &url, service.name()));
                }
            }
        }
        None => eprintln!(
            "no nats-server (`make local` builds one; or --nats-server PATH): events are written to the outboxes and not published"
        ),
    }
    for index in 0..plan.processes.len() {
        let process = &plan.processes[index];
        eprint!("starting {:<10} … ", process.instance);
        let started = match plan.command_args(index) {
            Ok(args) => start(process, args, &bin_dir, &logs).await,
            Err(error) => Err(anyhow::anyhow!(error)),
        };
        match started {
            Ok(started) => {
                eprintln!("ready on {}", started.process.listen);
                plan.bound(index, started.process.listen, started.process.admin);
                if started.process.service == Some(Service::Order) {
                    publish_order_addresses(&data_dir, &plan.bound_addresses_of(Service::Order))?;
                }
                running.push(started);
            }
            Err(error) => {
                eprintln!("failed");
                stop_all(&mut running);
                return Err(error);
            }
        }
    }
    let scrape_config = data_dir.join("prometheus.yml");
    std::fs::write(&scrape_config, plan.scrape_config())
        .with_context(|| format!("cannot write {}", scrape_config.display()))?;
    print_summary(&plan, &running, security);

    let outcome = supervise(&mut running, &bin_dir, &data_dir, &mut stop).await;
    eprintln!("\nstopping …");
    stop_all(&mut running);
    eprintln!("stopped; the data stays in {}", data_dir.display());
    outcome
}

/// Writes where the order service listens for the product service ([`order_addresses`]).
fn publish_order_addresses(data_dir: &Path, addresses: &[SocketAddr]) -> anyhow::Result<()> {
    let list: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    identity::write_atomically(
        &order_addresses(data_dir),
        list.join("\n").as_bytes(),
        false,
    )
}

/// Every binary present and every planned port free, before anything starts.
fn preflight(plan: &Plan, broker: Option<&Process>, bin_dir: &Path) -> anyhow::Result<()> {
    for process in plan.processes.iter().chain(broker) {
        let binary = match &process.launch {
            Launch::Component => bin_dir.join(process.binary),
            Launch::Broker(binary) => binary.clone(),
        };
        if !binary.is_file() {
            bail!(
                "{} is missing; build the components first (`make local` does: cargo build --bins)",
                binary.display()
            );
        }
        if process.listen.port() != 0 && std::net::TcpListener::bind(process.listen).is_err() {
            bail!(
                "{} is already in use (another `msa-local up`?); stop it or choose other ports with --port",
                process.listen
            );
        }
    }
    Ok(())
}

/// Starts `process` with `args`, learns where it listens, and waits (30 s in all) until it is
/// ready there. One that exits first is reported with its status and the end of its log.
async fn start(
    process: &Process,
    args: Vec<String>,
    bin_dir: &Path,
    logs: &Path,
) -> anyhow::Result<Running> {
    let log = logs.join(format!("{}.log", process.instance));
    let child = spawn(process, &args, bin_dir, &log)?;
    let mut running = Running {
        process: process.clone(),
        args,
        child,
        log,
        restarts: Restarts::new(Instant::now()),
        restart_at: None,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let result = async {
        let planned = running.process.listen;
        running.process.listen = listening(&mut running, planned, deadline).await?;
        if let Some(admin) = running.process.admin {
            running.process.admin = Some(listening(&mut running, admin, deadline).await?);
        }
        match running.process.launch {
            Launch::Component => ready(&mut running, deadline).await,
            // Clients wait for JetStream themselves; listening is enough here.
            Launch::Broker(_) => Ok(()),
        }
    }
    .await;
    if result.is_err() {
        let _ = running.child.kill();
        let _ = running.child.wait();
    }
    result.map(|()| running)
}

/// The address the process bound at `planned`'s IP, as the kernel lists its sockets: the planned
/// one, or with port 0 whichever the OS gave it. (Where /proc is missing, a planned port is
/// taken on trust.)
async fn listening(
    running: &mut Running,
    planned: SocketAddr,
    deadline: Instant,
) -> anyhow::Result<SocketAddr> {
    loop {
        exited_before(running, "listening")?;
        let bound = match msa_listening::addresses(running.child.id()) {
            Ok(bound) => bound,
            Err(_) if Path::new("/proc/self/net/tcp").exists() => Vec::new(), // exiting: see above
            Err(_) if planned.port() != 0 => return Ok(planned),
            Err(error) => bail!(
                "cannot see which port {} was given ({error}); --port 0 needs Linux's /proc, give a port instead",
                running.process.instance
            ),
        };
        if let Some(address) = bound
            .into_iter()
            .find(|a| a.ip() == planned.ip() && (planned.port() == 0 || a.port() == planned.port()))
        {
            return Ok(address);
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not listen on {planned} within 30 s; its log, {}:\n{}",
                running.process.instance,
                running.log.display(),
                tail(&running.log)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `/readyz` answers 200 at the address the process listens on.
async fn ready(running: &mut Running, deadline: Instant) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let url = format!("http://{}/readyz", running.process.listen);
    loop {
        if let Ok(response) = http.get(&url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        exited_before(running, "becoming ready")?;
        if Instant::now() > deadline {
            bail!(
                "{} was not ready after 30 s; its log, {}:\n{}",
                running.process.instance,
                running.log.display(),
                tail(&running.log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An error with its exit status and the end of its log, if the process has exited.
fn exited_before(running: &mut Running, what: &str) -> anyhow::Result<()> {
    if let Some(status) = running.child.try_wait()? {
        bail!(
            "{} exited ({status}) before {what}; its log, {}:\n{}",
            running.process.instance,
            running.log.display(),
            tail(&running.log)
        );
    }
    Ok(())
}

/// Runs `process` with `args` and its output appended to `log`.
fn spawn(process: &Process, args: &[String], bin_dir: &Path, log: &Path) -> anyhow::Result<Child> {
    let out = File::options().create(true).append(true).open(log)?;
    if let Launch::Broker(binary) = &process.launch {
        // nats-server cannot watch its parent as the components do (MSA_EXIT_WITH_PARENT):
        // the kernel kills it when msa-local dies (util-linux's setpriv sets the parent-death
        // signal, then runs it).
        return Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .arg(binary)
            .args(args)
            .env("MSA_POD_NAME", &process.instance)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {} (through setpriv)", binary.display()));
    }
    Command::new(bin_dir.join(process.binary))
        .args(["--listen", &process.listen.to_string()])
        .args(
            process
                .admin
                .iter()
                .flat_map(|admin| ["--admin-listen".to_owned(), admin.to_string()]),
        )
        .args(args)
        .env("MSA_POD_NAME", &process.instance)
        // Each component names itself in traces (msa-gateway, msa-order, ...); the rest of the
        // OTEL_* variables are inherited, so one exporter setting traces the whole run.
        .env_remove("OTEL_SERVICE_NAME")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // Its own process group: Ctrl-C reaches msa-local, which stops the components in order.
        .process_group(0)
        .env("MSA_EXIT_WITH_PARENT", "1")
        .spawn()
        .with_context(|| format!("cannot start {}", process.binary))
}

fn print_summary(plan: &Plan, running: &[Running], security: Security) {
    println!("\nmsa is running — gateway http://{}", plan.gateway());
    for r in running {
        if r.process.launch != Launch::Component {
            println!("  {:<10} nats://{}", r.process.instance, r.process.listen);
            continue;
        }
        match r.process.admin {
            Some(admin) => println!(
                "  {:<10} http://{:<21}  admin http://{admin}",
                r.process.instance,
                r.process.listen.to_string()
            ),
            None => println!("  {:<10} http://{}", r.process.instance, r.process.listen),
        }
    }
    println!(
        "data:       {} (user.db, order.db, product.db)",
        plan.data_dir.display()
    );
    let local = std::env::current_exe()
        .map(|exe| exe.display().to_string())
        .unwrap_or_else(|_| "msa-local".into());
    let data = plan.data_dir.display();
    println!(
        "logs:       {} (merged: {local} logs --data-dir {data} -f)",
        plan.data_dir.join("logs").display()
    );
    match running
        .iter()
        .find(|r| r.process.launch != Launch::Component)
    {
        Some(_) => println!(
            "events:     JetStream and its log under {} ({local} events --data-dir {data} -f)",
            crate::broker::folder(&plan.data_dir).display()
        ),
        None => {
            println!("events:     written to each service's outbox, not published (no nats-server)")
        }
    }
    println!(
        "endpoints:  http://{}/debug/endpoints",
        plan.gateway_admin()
    );
    if security.auth {
        println!(
            "admin:      /metrics, /info and /debug/endpoints only on each component's admin address ({}, listed above), not on the API's",
            crate::plan::ADMIN_HOST
        );
    }
    println!(
        "prometheus: prometheus --config.file={}/prometheus.yml scrapes every component",
        data
    );
    if security.auth {
        println!(
            "auth:       on — tokens: {local} token --data-dir {data} --user <user id> [--admin]"
        );
        println!(
            "            (open without one: POST /users, GET /products, GET /products/{{id}})"
        );
    } else {
        println!("auth:       off — anyone may act as anyone; `up --auth` requires tokens");
    }
    if let Some(rate) = security.rate_limit {
        println!("rate limit: {rate} requests/s per caller at the gateway");
    }
    println!(
        "try:        {local} demo --gateway http://{} --data-dir {data}",
        plan.gateway()
    );
    println!("Ctrl-C stops everything; the data stays.");
}

/// Ctrl-C, SIGTERM and SIGHUP, caught from the moment `up` starts: a signal that came before
/// its handler would kill msa-local without stopping the components in order — or, where the
/// shell ignores SIGHUP (`nohup`), be lost, leaving everything running.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn catch() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
}

/// Until Ctrl-C, SIGTERM or SIGHUP. A component that dies is reported and started again after
/// its backoff; the others keep serving (the gateway steers around the missing replica).
/// The services' tokens are issued again well before they expire (as kubelet rotates a
/// projected token).
async fn supervise(
    running: &mut [Running],
    bin_dir: &Path,
    data_dir: &Path,
    stop: &mut StopSignals,
) -> anyhow::Result<()> {
    let mut token_issued = Instant::now();
    loop {
        if token_issued.elapsed() >= identity::SERVICE_TOKEN_RENEWAL {
            match identity::issue_service_tokens(data_dir) {
                Ok(()) => token_issued = Instant::now(),
                Err(error) => eprintln!("cannot renew the services' tokens: {error:#}"),
            }
        }
        tokio::select! {
            _ = stop.interrupt.recv() => return Ok(()),
            _ = stop.terminate.recv() => return Ok(()),
            _ = stop.hangup.recv() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let now = Instant::now();
        for r in running.iter_mut() {
            match r.restart_at {
                None => {
                    if let Some(status) = r.child.try_wait()? {
                        let delay = r.restarts.died(now);
                        eprintln!(
                            "{} exited unexpectedly ({status}); restarting it in {} s. The rest keep serving. The end of its log, {}:\n{}",
                            r.process.instance,
                            delay.as_secs(),
                            r.log.display(),
                            tail(&r.log)
                        );
                        r.restart_at = Some(now + delay);
                    }
                }
                // On the address it had: the gateway's list and its callers' name it.
                Some(at) if now >= at => match spawn(&r.process, &r.args, bin_dir, &r.log) {
                    Ok(child) => {
                        eprintln!("{} started again", r.process.instance);
                        r.child = child;
                        r.restarts.started(now);
                        r.restart_at = None;
                    }
                    Err(error) => {
                        let delay = r.restarts.died(now);
                        eprintln!(
                            "{} could not be started again ({error:#}); next try in {} s",
                            r.process.instance,
                            delay.as_secs()
                        );
                        r.restart_at = Some(now + delay);
                    }
                },
                Some(_) => {}
            }
        }
    }
}

/// SIGTERM to each component in the reverse of the start order (the gateway, then order, then
/// product and user; product and order call each other, so one of them goes while the other
/// may still call it, and that call fails like any call to a peer that is away), each waited
/// for up to 25 s (their drain) before it is killed.
fn stop_all(running: &mut Vec<Running>) {
    while let Some(mut r) = running.pop() {
        if r.child.try_wait().ok().flatten().is_some() {
            continue;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &r.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(25);
        loop {
            match r.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    eprintln!(
                        "{} did not stop within 25 s; killing it",
                        r.process.instance
                    );
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// The last lines of a log.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
