//! The `standby` operator command: argument parsing, dispatch and exit codes.
//!
//! Exit codes are a contract for scripts: 0 success, 1 error, 2 usage, 3 the primary is
//! not answering. `--json` output shapes are documented in the README and stay stable.

mod aws;
mod doctor;
mod drain;
mod inspect;
mod manage;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::backend::Storage;
use crate::config::{Config, DEFAULT_CONFIG, ENV_CONFIG};
use crate::error::{ConfigError, StoreError};
use crate::model::{BadMessageId, MessageId, Status};
use crate::serve::ServeError;
use crate::smtp::client::RelaySetupError;

/// A standby (secondary) MX: holds mail while your primary is down, hands it back after.
#[derive(Debug, Parser)]
#[command(name = "standby", version, about)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = ENV_CONFIG, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

/// Which messages `list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFilter {
    Held,
    Paused,
    Delivered,
    Failed,
    All,
}

impl StatusFilter {
    fn status(self) -> Option<Status> {
        match self {
            StatusFilter::Held => Some(Status::Held),
            StatusFilter::Paused => Some(Status::Paused),
            StatusFilter::Delivered => Some(Status::Delivered),
            StatusFilter::Failed => Some(Status::Failed),
            StatusFilter::All => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive mail on the configured listener and drain it to the primary when it is up.
    Serve,
    /// The primary's health and how many messages are in each state.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List messages, oldest first.
    List {
        #[arg(long, value_enum, default_value = "all")]
        status: StatusFilter,
        #[arg(long)]
        json: bool,
    },
    /// Show one message's envelope and delivery state.
    Show {
        id: String,
        #[arg(long, conflicts_with = "raw")]
        json: bool,
        /// Write the stored message bytes to standard output.
        #[arg(long)]
        raw: bool,
    },
    /// Deliver held mail to the primary now.
    Drain {
        /// Skip the health probe and try even if the primary looks down.
        #[arg(long)]
        force: bool,
        /// Only list what would be sent.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        /// Invoke the deployed drain function instead (AWS backend) and print its summary.
        #[arg(long, value_name = "FUNCTION", conflicts_with = "json")]
        remote: Option<String>,
    },
    /// Check the setup: MX records, SES identity and receipt rules (AWS), storage, the
    /// drain's login at the primary and its health. Exits 1 when a check fails.
    Doctor {
        #[arg(long)]
        json: bool,
        /// DNS server for the MX checks, `IP:PORT` (default: the system's resolvers).
        #[arg(long, value_name = "IP:PORT")]
        nameserver: Option<std::net::SocketAddr>,
    },
    /// Create the S3 bucket and DynamoDB table of `backend = "aws"` (for emulators and
    /// first-time setups; the deployment template defines the same resources).
    AwsInit,
    /// Pause held messages: they stay in the spool and are not delivered.
    Hold {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
    },
    /// Release paused messages for delivery.
    Release {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
    },
    /// Try held or failed messages again at once (failed recipients become pending).
    Retry {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Delete messages from the spool for good.
    Purge {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

/// Why a command failed; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Relay(#[from] RelaySetupError),
    #[error(transparent)]
    BadId(#[from] BadMessageId),
    #[error(transparent)]
    Setup(#[from] crate::lambda::SetupError),
    /// An AWS call outside the storage ports (Lambda invoke, table creation) failed.
    #[error("{0}")]
    Aws(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    PrimaryDown(String),
    /// `standby doctor` found failing checks; the report says which.
    #[error("{0} check(s) failed")]
    Unhealthy(usize),
    /// Some of several messages could not be changed; each was reported already.
    #[error("{0} of the messages could not be changed")]
    Partial(usize),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::BadId(_) => 2,
            CliError::PrimaryDown(_) => 3,
            _ => 1,
        }
    }
}

fn parse_ids(ids: &[String]) -> Result<Vec<MessageId>, CliError> {
    ids.iter()
        .map(|s| s.parse::<MessageId>().map_err(CliError::from))
        .collect()
}

/// Run a parsed command (inside a tokio runtime).
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let config = Config::load(&cli.config)?;
    if let Command::Serve = cli.command {
        crate::serve::serve(config, shutdown_signal()).await?;
        return Ok(());
    }
    if let Command::AwsInit = cli.command {
        return aws::init(&config).await;
    }
    if let Command::Doctor { json, nameserver } = cli.command {
        return doctor::run(&config, json, nameserver).await;
    }
    if let Command::Drain {
        remote: Some(function),
        force,
        dry_run,
        ..
    } = &cli.command
    {
        return aws::remote_drain(&config, function, *force, *dry_run).await;
    }
    let storage = Storage::open(&config).await?;
    match cli.command {
        Command::Serve | Command::AwsInit | Command::Doctor { .. } => {
            unreachable!("handled above")
        }
        Command::Status { json } => inspect::status(&config, &storage, json).await,
        Command::List { status, json } => inspect::list(&storage, status.status(), json).await,
        Command::Show { id, json, raw } => {
            inspect::show(&storage, id.parse::<MessageId>()?, json, raw).await
        }
        Command::Drain {
            force,
            dry_run,
            json,
            ..
        } => {
            let relay = aws::relay(&config).await?;
            drain::drain(&config, relay, &storage, force, dry_run, json).await
        }
        Command::Hold { ids, all } => manage::hold(&storage, &parse_ids(&ids)?, all).await,
        Command::Release { ids, all } => manage::release(&storage, &parse_ids(&ids)?, all).await,
        Command::Retry { ids } => manage::retry(&storage, &parse_ids(&ids)?).await,
        Command::Purge { ids, yes } => {
            if !yes {
                return Err(CliError::Usage(
                    "purge deletes messages for good; add --yes to confirm".into(),
                ));
            }
            manage::purge(&storage, &parse_ids(&ids)?).await
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
