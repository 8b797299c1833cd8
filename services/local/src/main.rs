//! `msa-local up` runs the whole application on this machine — the user, order and product
//! services and the gateway as real processes on 127.0.0.1, SQLite files under a data folder —
//! until Ctrl-C. `msa-local demo` drives the shop's flow through the running gateway.

mod broker;
mod demo;
mod events;
mod identity;
mod logs;
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
        /// That run's data folder, whose key issues the demo's tokens when auth is on.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
    },
    /// Print the components' logs merged in time order (`-f` follows them; `--request-id`
    /// follows one request across every component).
    Logs(logs::LogsArgs),
    /// Print the events the services published (`-f` follows them; `--type order.confirmed`,
    /// `--subject <id>` narrow them down).
    Events(events::EventsArgs),
    /// Print a bearer token for a user of an `up --auth` run (signed with its key).
    Token {
        /// The user's id (the token's subject).
        #[arg(long)]
        user: String,
        /// Give the token the admin role (ship orders, set stock, see every user).
        #[arg(long)]
        admin: bool,
        /// The run's data folder.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// How long the token is valid.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=1440))]
        minutes: u64,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Up(args) => run::up(args).await,
        Command::Demo { gateway, data_dir } => demo::run(&gateway, &data_dir).await,
        Command::Logs(args) => logs::run(args),
        Command::Events(args) => events::run(args).await,
        Command::Token {
            user,
            admin,
            data_dir,
            minutes,
        } => identity::user_token(
            &data_dir,
            &user,
            admin,
            std::time::Duration::from_secs(minutes * 60),
        )
        .map(|token| println!("{token}")),
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
