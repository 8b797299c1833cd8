//! What the gateway's process tests share.

use std::net::SocketAddr;

use msa_service_kit::testing::{ServiceProcess, free_port};

pub const GATEWAY: &str = env!("CARGO_BIN_EXE_msa-gateway");
pub const ECHO: &str = env!("CARGO_BIN_EXE_msa-echo");

/// One `msa-echo` backend on 127.0.0.2 and a gateway sending every route to it, started with
/// `extra` flags; the backend's address comes back too.
pub async fn echo_behind_gateway(extra: &[&str]) -> (ServiceProcess, SocketAddr, ServiceProcess) {
    let backend_addr = free_port("127.0.0.2");
    let mut command = std::process::Command::new(ECHO);
    command.args(["--listen", &backend_addr.to_string()]);
    let backend = ServiceProcess::launch(command, backend_addr).await;
    let list = backend_addr.to_string();
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
    (backend, backend_addr, gateway)
}
