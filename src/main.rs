//! The `standby` binary: logging, argument parsing, runtime, exit code. Nothing else.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use standby::cli::{Cli, Command, prepare, run};
use standby::config::ENV_LOG;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon logs each message at info; operator commands only say what went wrong,
    // so their own output (and the drain's progress bar) stays readable.
    let default_level = match cli.command {
        Command::Serve => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env(ENV_LOG).unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Before the runtime's threads exist: this may switch to the spool owner's user.
    let config = match prepare(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("standby: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    // `serve` takes a runtime thread per core (listeners, inbox, drain at once). Operator
    // commands wait on the disk and the network: one runtime thread (and the blocking
    // pool) serves them with fewer hand-offs between threads; `standby drain` spends
    // about a tenth less CPU per message than with two (README, "Where the 2x targets stand").
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if !matches!(cli.command, Command::Serve) {
        builder.worker_threads(1);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("standby: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("standby: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
