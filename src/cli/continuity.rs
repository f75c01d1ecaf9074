//! `standby continuity status|start|end|extend`: the operator's hand on continuity
//! events (see [`crate::continuity`]). A change is saved to the shared record and
//! audited; the alerts and notices it owes are sent by the nodes that run the loop
//! (`standby serve`, the drain function) at their next check, so they go out the same
//! way whoever made the change.

use std::io::Write;

use serde::Serialize;

use super::CliError;
use super::manage::operator;
use crate::config::Config;
use crate::model::continuity::{Event, PendingAlert};
use crate::ports::{Storage, SystemClock};

/// What `standby continuity` does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ContinuityAction {
    /// The event under way (if any), the alerts still owed and the recent history.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Start an event now (a planned outage, or one the standby has not seen yet); it
    /// ends only by `standby continuity end`.
    Start {
        /// Why, for the alerts and the audit log.
        #[arg(long, default_value = "started by an operator")]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// End the event under way: end alerts and end notices follow.
    End {
        #[arg(long)]
        json: bool,
    },
    /// Move the event's hard cap (`[continuity] max_hours`) N hours later.
    Extend {
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=8760))]
        hours: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct StatusOut<'a> {
    active: bool,
    current: Option<&'a Event>,
    pending_alerts: &'a [PendingAlert],
    history: &'a [Event],
}

#[derive(Serialize)]
struct ChangeOut<'a> {
    action: &'a str,
    changed: bool,
    event: Option<&'a Event>,
}

pub(super) async fn run(
    config: &Config,
    storage: &Storage,
    action: ContinuityAction,
) -> Result<(), CliError> {
    let runner = crate::serve::continuity::runner(
        config,
        crate::serve::continuity::Parts {
            storage: storage.clone(),
            clock: std::sync::Arc::new(SystemClock),
            mailer: None,
            key: None,
            sdk: None,
            store: config.store_description(),
            webhook_secret: None,
            decide_only: true,
            alternates_text: None,
        },
    )
    .await?;
    let by = operator();
    let mut out = std::io::stdout().lock();
    match action {
        ContinuityAction::Status { json } => {
            let c = storage.events.load().await?;
            let view = StatusOut {
                active: c.current.is_some(),
                current: c.current.as_ref(),
                pending_alerts: &c.pending,
                history: &c.history,
            };
            if json {
                serde_json::to_writer_pretty(&mut out, &view).map_err(std::io::Error::from)?;
                writeln!(out)?;
                return Ok(());
            }
            match &c.current {
                Some(ev) => describe(&mut out, "event", ev)?,
                None => writeln!(out, "no continuity event under way")?,
            }
            if !c.pending.is_empty() {
                writeln!(out, "alerts owed:")?;
                for p in &c.pending {
                    writeln!(
                        out,
                        "  {} raised {} (attempts {})",
                        p.kind,
                        p.at.format("%Y-%m-%d %H:%M:%S"),
                        p.attempts
                    )?;
                }
            }
            for ev in c.history.iter().take(10) {
                describe(&mut out, "past", ev)?;
            }
            Ok(())
        }
        ContinuityAction::Start { reason, json } => {
            let (changed, ev) = match runner.start(&by, &reason).await? {
                Ok(ev) => (true, ev),
                Err(ev) => (false, ev),
            };
            report(
                &mut out,
                json,
                "start",
                changed,
                Some(&ev),
                "an event is under way already",
            )
        }
        ContinuityAction::End { json } => {
            let ev = runner.end(&by).await?;
            report(
                &mut out,
                json,
                "end",
                ev.is_some(),
                ev.as_ref(),
                "no event is under way",
            )
        }
        ContinuityAction::Extend { hours, json } => {
            let ev = runner.extend(hours, &by).await?;
            report(
                &mut out,
                json,
                "extend",
                ev.is_some(),
                ev.as_ref(),
                "no event is under way",
            )
        }
    }
}

fn report(
    out: &mut impl Write,
    json: bool,
    action: &str,
    changed: bool,
    ev: Option<&Event>,
    unchanged: &str,
) -> Result<(), CliError> {
    if json {
        serde_json::to_writer(
            &mut *out,
            &ChangeOut {
                action,
                changed,
                event: ev,
            },
        )
        .map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else if changed {
        if let Some(ev) = ev {
            describe(out, action, ev)?;
        }
        writeln!(
            out,
            "alerts and notices go out at the next check of `standby serve` or the drain function"
        )?;
    } else {
        writeln!(out, "{unchanged}")?;
    }
    if changed || action == "start" {
        Ok(())
    } else {
        Err(CliError::Usage(unchanged.into()))
    }
}

fn describe(out: &mut impl Write, label: &str, ev: &Event) -> std::io::Result<()> {
    write!(
        out,
        "{label:<6} {} started {} by {}",
        ev.id,
        ev.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        ev.started_by
    )?;
    match (ev.ended_at, &ev.ended_by) {
        (Some(at), Some(by)) => writeln!(
            out,
            ", ended {} by {by}",
            at.format("%Y-%m-%d %H:%M:%S UTC")
        )?,
        _ => writeln!(
            out,
            "; cap at {}",
            ev.cap_at.format("%Y-%m-%d %H:%M:%S UTC")
        )?,
    }
    writeln!(out, "       {}", ev.reason)?;
    if ev.told > 0 {
        writeln!(out, "       {} users told", ev.told)?;
    }
    Ok(())
}
