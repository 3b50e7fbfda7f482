//! The `chi` command-line tool: a sidecar agent, discovery queries, one-off health checks, a
//! balancer preview and a load-balancing HTTP proxy, all on the `chi-discovery` library.
//!
//! `main` only parses the arguments, sets up logging and maps the outcome to an exit code; every
//! subcommand lives in its own module (ripgrep's thin main).

mod admin;
mod agent;
mod check;
mod cli;
mod config_check;
mod console;
mod discover;
mod failure;
mod output;
mod pick;
mod progress;
mod proxy;
mod select;
mod source;
mod sync;
mod watch;
mod xds;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, ConfigCommand};
use crate::failure::Failure;

/// mimalloc: the proxy allocates per request inside hyper (header maps, buffers, boxed bodies);
/// with glibc's malloc, allocation and free were about a tenth of its instructions.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report(anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Agent(args) => agent::run(args).await,
            Command::Discover(args) => discover::run(args).await,
            Command::Watch(args) => watch::run(args).await,
            Command::Check(args) => check::run(args).await,
            Command::Proxy(args) => proxy::run(args).await,
            Command::Select(args) => select::run(args).await,
            Command::Xds(args) => xds::run(args).await,
            Command::Config {
                command: ConfigCommand::Check(args),
            } => config_check::run(args),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => report(e),
    }
}

/// Prints an error as one line plus a hint and picks the exit code.
fn report(e: anyhow::Error) -> ExitCode {
    match e.downcast_ref::<Failure>() {
        Some(f) => {
            eprintln!("error: {}", f.message);
            if let Some(hint) = &f.hint {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(f.code)
        }
        None => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,chi=info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
