//! What the gateway's process tests share (each test binary uses part of it).
#![allow(dead_code)]

use std::net::SocketAddr;

use msa_service_kit::testing::ServiceProcess;

pub const GATEWAY: &str = env!("CARGO_BIN_EXE_msa-gateway");
pub const ECHO: &str = env!("CARGO_BIN_EXE_msa-echo");

/// An `msa-echo` backend on a port of `host` the OS chooses.
pub async fn echo(host: [u8; 4], flags: &[&str]) -> ServiceProcess {
    let listen = SocketAddr::from((host, 0));
    let mut command = std::process::Command::new(ECHO);
    command.args(["--listen", &listen.to_string()]).args(flags);
    ServiceProcess::launch(command, listen).await
}

/// One `msa-echo` backend on 127.0.0.2 and a gateway sending every route to it, started with
/// `extra` flags; the backend's address comes back too.
pub async fn echo_behind_gateway(extra: &[&str]) -> (ServiceProcess, SocketAddr, ServiceProcess) {
    let backend = echo([127, 0, 0, 2], &[]).await;
    let list = backend.addr.to_string();
    let mut args = vec![
        "--upstream-user",
        &list,
        "--upstream-order",
        &list,
        "--upstream-product",
        &list,
        "--drain-delay-seconds",
        "0",
    ];
    args.extend_from_slice(extra);
    let gateway = ServiceProcess::start(GATEWAY, &args, &[("RUST_LOG", "warn")]).await;
    let backend_addr = backend.addr;
    (backend, backend_addr, gateway)
}
