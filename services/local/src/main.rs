//! `msa-local up` runs the whole application on this machine — the user, order and product
//! services and the gateway as real processes on 127.0.0.1, SQLite files under a data folder —
//! until Ctrl-C. `msa-local demo` drives the shop's flow through the running gateway.

mod demo;
mod plan;
mod restart;
mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(version, about = "Run msa locally, no cluster needed")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start every component on loopback, wait until all are ready, run until Ctrl-C.
    Up(run::UpArgs),
    /// Create a user and a product, order it, list the orders, then show the stock going down
    /// and an order refused for insufficient stock — all through the gateway.
    Demo {
        /// The gateway of a running `msa-local up`.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        gateway: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Up(args) => run::up(args).await,
        Command::Demo { gateway } => demo::run(&gateway).await,
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("msa-local: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Where the component binaries are: beside this one unless told otherwise.
fn default_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."))
}
