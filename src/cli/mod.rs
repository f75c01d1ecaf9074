//! The `standby` operator command: argument parsing, dispatch and exit codes.
//!
//! Exit codes are a contract for scripts: 0 success, 1 error, 2 usage, 3 the primary is
//! not answering. `--json` output shapes are documented in the README and stay stable.

mod aws;
mod continuity;
mod doctor;
mod drain;
mod inspect;
mod manage;
mod output;
mod owner;
mod primary;
mod recover;
mod reindex;
mod time;
mod users;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

use crate::config::{Config, ENV_CONFIG};
use crate::error::{ConfigError, StoreError};
use crate::model::{BadMessageId, MessageId, Status};
use crate::ports::ListQuery;
use crate::ports::Storage;
use crate::serve::ServeError;
use crate::smtp::client::RelaySetupError;
use time::parse_time;

/// A standby (secondary) MX: holds mail while your primary is down, hands it back after.
#[derive(Debug, Parser)]
#[command(name = "standby", version, about)]
pub struct Cli {
    /// Configuration file [default: $STANDBY_CONFIG, else ./standby.toml, else
    /// /etc/standby/standby.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
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
    Journal,
    /// Sent by users to outside recipients, not yet delivered there.
    Outbound,
    All,
}

impl StatusFilter {
    fn status(self) -> Option<Status> {
        match self {
            StatusFilter::Held => Some(Status::Held),
            StatusFilter::Paused => Some(Status::Paused),
            StatusFilter::Delivered => Some(Status::Delivered),
            StatusFilter::Failed => Some(Status::Failed),
            StatusFilter::Journal => Some(Status::Journal),
            StatusFilter::Outbound => Some(Status::Outbound),
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
    /// List messages, oldest first; the filters combine (and).
    List {
        #[arg(long, value_enum, default_value = "all")]
        status: StatusFilter,
        /// Held mail (any status but journal) or journal copies only.
        #[arg(long, value_enum)]
        class: Option<crate::model::Class>,
        /// Envelope sender (`<>` for bounces).
        #[arg(long, value_name = "ADDR")]
        from: Option<String>,
        /// A recipient (of a journal copy: an original recipient).
        #[arg(long, value_name = "ADDR")]
        rcpt: Option<String>,
        /// Text the subject contains (case-insensitive).
        #[arg(long, value_name = "TEXT")]
        subject: Option<String>,
        /// Received at or after (`2026-11-28`, `3d`, ...).
        #[arg(long, value_parser = parse_time)]
        since: Option<DateTime<Utc>>,
        /// Received before.
        #[arg(long, value_parser = parse_time)]
        until: Option<DateTime<Utc>>,
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
        /// DNS server for the DNS checks, `IP:PORT` (default: the system's resolvers).
        #[arg(long, value_name = "IP:PORT")]
        nameserver: Option<std::net::SocketAddr>,
        /// Where the standby's public SMTP listener is reached from here, for the STARTTLS
        /// and certificate checks (default: the MX host, port 25).
        #[arg(long, value_name = "HOST:PORT")]
        connect: Option<String>,
        /// Port of the domains' MTA-STS policy servers (default 443; for test servers).
        #[arg(long, value_name = "PORT", default_value_t = 443)]
        https_port: u16,
    },
    /// Create the S3 bucket and DynamoDB table of `backend = "aws"` (for emulators and
    /// first-time setups; the deployment template defines the same resources).
    AwsInit,
    /// Pause held messages: they stay in the spool and are not delivered. With --legal,
    /// place messages of any kind under legal hold instead: nothing deletes them.
    Hold {
        #[arg(required_unless_present_any = ["all", "legal"], conflicts_with = "all")]
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        legal: LegalArgs,
    },
    /// Release paused messages for delivery; with --legal, lift a legal hold.
    Release {
        #[arg(required_unless_present_any = ["all", "legal"], conflicts_with = "all")]
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        legal: LegalArgs,
    },
    /// Apply the retention policy now (`standby serve` does it every
    /// `[retention] interval_secs`): delete what it says is due, audited; never what is
    /// under legal hold.
    Retention {
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// As if it were this time: `2027-06-01`, or `+90d` from now (with --dry-run:
        /// what will be due by then).
        #[arg(long, value_parser = parse_time)]
        at: Option<DateTime<Utc>>,
        #[arg(long)]
        json: bool,
    },
    /// The audit log: every deletion, legal hold and release, oldest first.
    Audit {
        #[arg(long)]
        json: bool,
    },
    /// Try held or failed messages again at once (failed recipients become pending).
    Retry {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Deliver journal copies (and delivered copies still kept) of mail received in a
    /// time window to the primary again, with their original envelope and one
    /// `X-Standby-Replay:` header. A rerun with the same --run-id sends nothing twice.
    Replay {
        /// Start of the window: `2026-11-28` (midnight) or `2026-11-28 09:00` in local
        /// time, `2026-11-28T09:00:00Z`, or `3d` / `12h` / `30m` / `2w` ago.
        #[arg(long, value_parser = parse_time)]
        since: DateTime<Utc>,
        /// End of the window (not included); now when omitted.
        #[arg(long, value_parser = parse_time)]
        until: Option<DateTime<Utc>>,
        /// Only to this original recipient.
        #[arg(long, value_name = "ADDR")]
        rcpt: Option<String>,
        /// Only list what would be sent.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        /// Continue an interrupted run (its id is printed at the end of each run).
        #[arg(long, value_name = "ID")]
        run_id: Option<String>,
    },
    /// Write stored messages to an mbox file, a Maildir or a directory of .eml files.
    Export {
        #[arg(long, value_enum)]
        format: crate::export::Format,
        /// The mbox file or the directory to create (an existing empty directory is used).
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "all")]
        status: StatusFilter,
        /// Received at or after (same forms as replay --since).
        #[arg(long, value_parser = parse_time)]
        since: Option<DateTime<Utc>>,
        /// Received before.
        #[arg(long, value_parser = parse_time)]
        until: Option<DateTime<Utc>>,
        /// Only messages to this recipient.
        #[arg(long, value_name = "ADDR")]
        rcpt: Option<String>,
        /// Only messages from this envelope sender (`<>` for bounces).
        #[arg(long, value_name = "ADDR")]
        from: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The emergency inbox's users: `user add ADDRESS`, `user list`, `user remove ADDRESS`.
    User {
        #[command(subcommand)]
        action: users::UserAction,
    },
    /// Rebuild the local spool's index from its message files and their envelopes
    /// (messages/ and orphans/), after the index was lost or corrupted; `standby serve`
    /// must be stopped. Rebuilt messages are paused unless --held.
    Reindex {
        /// Queue rebuilt messages for delivery (held) instead of pausing them.
        #[arg(long)]
        held: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print the settings the primary needs so that mail the standby hands back passes
    /// its checks (SPF, postscreen, greylisting, spam filters), filled in with this
    /// standby's name and addresses; never mynetworks.
    #[command(group(clap::ArgGroup::new("target").required(true)
        .args(["postfix", "rspamd", "exchange", "mailcow"])))]
    PrimaryConfig {
        /// Postfix: postscreen and client access exemptions, policyd-spf skip_addresses.
        #[arg(long)]
        postfix: bool,
        /// rspamd: external_relay, and no greylisting or rate limits for the standby.
        #[arg(long)]
        rspamd: bool,
        /// Exchange: a receive connector for the standby that bypasses anti-spam.
        #[arg(long)]
        exchange: bool,
        /// mailcow: forwarding hosts.
        #[arg(long)]
        mailcow: bool,
        /// An address the primary sees the standby connect from (repeat for several);
        /// default: the source address toward the primary and the standby's name resolved.
        #[arg(long = "address", value_name = "IP")]
        addresses: Vec<std::net::IpAddr>,
    },
    /// Continuity events: `continuity status`, `start`, `end`, `extend --hours N`.
    Continuity {
        #[command(subcommand)]
        action: continuity::ContinuityAction,
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

/// Legal hold options of `hold` and `release`.
#[derive(Debug, Clone, clap::Args)]
pub struct LegalArgs {
    /// A legal hold (not a delivery pause): IDs, or every message matching --rcpt,
    /// --since and --until.
    #[arg(long, conflicts_with = "all")]
    legal: bool,
    /// With --legal: messages to this recipient.
    #[arg(long, value_name = "ADDR", requires = "legal")]
    rcpt: Option<String>,
    /// With --legal: received at or after.
    #[arg(long, value_parser = parse_time, requires = "legal")]
    since: Option<DateTime<Utc>>,
    /// With --legal: received before.
    #[arg(long, value_parser = parse_time, requires = "legal")]
    until: Option<DateTime<Utc>>,
    /// With --legal: why (a case number), kept in the record and the audit log.
    #[arg(long, requires = "legal")]
    reason: Option<String>,
}

/// Why a command failed; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A drain run failed (storage, or a worker panicked: a bug).
    #[error(transparent)]
    Drain(#[from] crate::drain::DrainError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Relay(#[from] RelaySetupError),
    #[error(transparent)]
    BadId(#[from] BadMessageId),
    #[error(transparent)]
    Setup(#[from] crate::lambda::SetupError),
    #[error(transparent)]
    Owner(#[from] owner::OwnerError),
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
    #[error("export: {0}")]
    Export(String),
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

/// Print a command's summary on stdout: one JSON line with `--json`, else what `text`
/// writes.
fn print_summary<T: serde::Serialize>(
    json: bool,
    summary: &T,
    text: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = output::Human::unless_json(json, std::io::stdout().lock());
    if json {
        serde_json::to_writer(&mut out, summary).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        text(&mut out)?;
    }
    Ok(())
}

fn parse_ids(ids: &[String]) -> Result<Vec<MessageId>, CliError> {
    ids.iter()
        .map(|s| s.parse::<MessageId>().map_err(CliError::from))
        .collect()
}

/// A configuration and the file it was read from.
pub struct Loaded {
    pub path: PathBuf,
    pub config: Config,
}

/// Before the async runtime starts, while the process has one thread: find and read the
/// configuration and, run as root on another user's spool, become that user (see
/// [`owner`]).
///
/// # Errors
/// A configuration error, or [`owner::OwnerError`] naming the command to run instead.
pub fn prepare(cli: &Cli) -> Result<Loaded, CliError> {
    let path = Config::locate(
        cli.config.as_deref(),
        std::env::var_os(ENV_CONFIG).map(PathBuf::from),
    )?;
    let config = Config::load(&path)?;
    owner::become_spool_owner(&config, matches!(cli.command, Command::Serve))?;
    Ok(Loaded { path, config })
}

/// Run a parsed command with its configuration from [`prepare`] (inside a tokio runtime).
pub async fn run(cli: Cli, loaded: Loaded) -> Result<(), CliError> {
    let Loaded { path, config } = loaded;
    if let Command::Serve = cli.command {
        // SIGHUP re-reads the file serve started with.
        let reload = move || Config::load(&path);
        crate::serve::serve(config, reload, shutdown_signal()).await?;
        return Ok(());
    }
    if let Command::AwsInit = cli.command {
        return aws::init(&config).await;
    }
    if let Command::Doctor {
        json,
        nameserver,
        connect,
        https_port,
    } = cli.command
    {
        let opts = crate::doctor::Options {
            nameserver,
            connect,
            https_port,
        };
        return doctor::run(&config, json, &opts).await;
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
    if let Command::Reindex { held, json } = cli.command {
        return reindex::reindex(&config, held, json).await;
    }
    if let Command::User { action } = cli.command {
        return users::run(&config, action).await;
    }
    if let Command::PrimaryConfig {
        postfix,
        rspamd,
        exchange,
        addresses,
        ..
    } = cli.command
    {
        use crate::primary_config::Target;
        let target = match (postfix, rspamd, exchange) {
            (true, _, _) => Target::Postfix,
            (_, true, _) => Target::Rspamd,
            (_, _, true) => Target::Exchange,
            _ => Target::Mailcow,
        };
        return primary::print(&config, target, addresses).await;
    }
    let storage = Storage::open(&config).await?;
    // Operator changes count a drain's lease as ended only this long after its end.
    let skew =
        chrono::Duration::seconds(i64::try_from(config.drain.clock_skew_secs).unwrap_or(i64::MAX));
    let cli_hold = matches!(cli.command, Command::Hold { .. });
    match cli.command {
        Command::Serve
        | Command::AwsInit
        | Command::Doctor { .. }
        | Command::Reindex { .. }
        | Command::PrimaryConfig { .. }
        | Command::User { .. } => {
            unreachable!("handled above")
        }
        Command::Status { json } => inspect::status(&config, &storage, json).await,
        Command::List {
            status,
            class,
            from,
            rcpt,
            subject,
            since,
            until,
            json,
        } => {
            let query = ListQuery {
                status: status.status(),
                class,
                from,
                rcpt,
                subject,
                since,
                until,
                ..ListQuery::default()
            };
            inspect::list(&storage, query, json).await
        }
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
        Command::Hold { ids, all, legal } if !legal.legal => {
            manage::hold(&storage, skew, &parse_ids(&ids)?, all).await
        }
        Command::Release { ids, all, legal } if !legal.legal => {
            manage::release(&storage, skew, &parse_ids(&ids)?, all).await
        }
        Command::Hold { ids, legal, .. } | Command::Release { ids, legal, .. } => {
            let sel = ListQuery {
                rcpt: legal.rcpt,
                since: legal.since,
                until: legal.until,
                ..ListQuery::default()
            };
            let reason = legal.reason.unwrap_or_default();
            manage::legal(&storage, skew, &parse_ids(&ids)?, &sel, cli_hold, &reason).await
        }
        Command::Audit { json } => inspect::audit(&storage, json).await,
        Command::Continuity { action } => continuity::run(&config, &storage, action).await,
        Command::Retention { dry_run, at, json } => {
            let policy = config.retention();
            manage::retention(
                &storage,
                &policy,
                at.unwrap_or_else(Utc::now),
                dry_run,
                json,
            )
            .await
        }
        Command::Retry { ids } => manage::retry(&storage, skew, &parse_ids(&ids)?).await,
        Command::Replay {
            since,
            until,
            rcpt,
            dry_run,
            json,
            run_id,
        } => {
            let req = crate::replay::ReplayRequest {
                since,
                until,
                rcpt,
                run: run_id.unwrap_or_else(|| format!("replay-{}", ulid::Ulid::new())),
            };
            let relay = aws::relay(&config).await?;
            recover::replay(relay, &storage, req, (dry_run, json), config.authserv_ids()).await
        }
        Command::Export {
            format,
            out,
            status,
            since,
            until,
            rcpt,
            from,
            json,
        } => {
            let sel = ListQuery {
                status: status.status(),
                since,
                until,
                rcpt,
                from,
                ..ListQuery::default()
            };
            recover::export(&storage, sel, format, &out, json).await
        }
        Command::Purge { ids, yes } => {
            if !yes {
                return Err(CliError::Usage(
                    "purge deletes messages for good; add --yes to confirm".into(),
                ));
            }
            manage::purge(&storage, skew, &parse_ids(&ids)?).await
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
