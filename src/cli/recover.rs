//! `standby replay` and `standby export`: getting recent mail back to people, with a
//! progress bar on a terminal.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;

use super::CliError;
use crate::export::{self, Format};
use crate::ports::ListQuery;
use crate::ports::Storage;
use crate::ports::SystemClock;
use crate::replay::{self, ReplayOutcome, ReplayRequest, Replayer};
use crate::smtp::SmtpRelay;

fn bar(total: u64, json: bool) -> Option<indicatif::ProgressBar> {
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len}  {eta} left  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

pub(super) async fn replay(
    relay: SmtpRelay,
    storage: &Storage,
    req: ReplayRequest,
    (dry_run, json): (bool, bool),
    strip: Vec<String>,
) -> Result<(), CliError> {
    let (cands, done) = replay::candidates(storage, &req).await?;
    let mut out = super::output::Human::unless_json(json, std::io::stdout().lock());
    if dry_run {
        if json {
            let items: Vec<serde_json::Value> = cands
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "id": c.id.to_string(),
                        "status": c.status,
                        "received_at": c.received_at,
                        "mail_from": c.mail_from,
                        "rcpt_to": c.rcpts,
                        "subject": c.subject,
                    })
                })
                .collect();
            serde_json::to_writer_pretty(&mut out, &items).map_err(std::io::Error::from)?;
            writeln!(out)?;
        } else {
            for c in &cands {
                writeln!(
                    out,
                    "{}  {:<9}  <{}> -> {}",
                    c.id,
                    c.status.as_str(),
                    c.mail_from,
                    c.rcpts.join(", ")
                )?;
            }
            writeln!(
                out,
                "{} message(s) would be replayed to {} in run {} ({} already done in it)",
                cands.len(),
                relay.address(),
                req.run,
                done
            )?;
        }
        return Ok(());
    }
    let address = relay.address().to_string();
    let replayer =
        Replayer::new(storage.clone(), Arc::new(relay), Arc::new(SystemClock)).stripping(strip);
    let bar = bar(cands.len() as u64, json);
    let progress = |_: &replay::Candidate, o: &ReplayOutcome| {
        if let Some(b) = &bar {
            b.inc(1);
            if let ReplayOutcome::Refused(why) | ReplayOutcome::Partial(why) = o {
                b.set_message(why.clone());
            }
        }
    };
    let report = replayer
        .run(&req.run, cands, done, &progress)
        .await
        .map_err(|replay::ReplayError::Store(e)| CliError::Store(e))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    drop(out);
    super::print_summary(json, &report, |out| {
        writeln!(
            out,
            "run {}: replayed {}, partly {}, refused {}, not sent {} ({} recipients; {} already done)",
            report.run,
            report.replayed,
            report.partial,
            report.refused,
            report.not_sent,
            report.recipients,
            report.already_done
        )?;
        if report.partial + report.refused + report.not_sent > 0 {
            writeln!(
                out,
                "rerun with --run-id {} to try the rest without sending anything twice",
                report.run
            )?;
        }
        Ok(())
    })?;
    if report.not_sent > 0 && report.replayed + report.partial + report.refused == 0 {
        return Err(CliError::PrimaryDown(format!(
            "primary {address}: {}",
            report.stopped.as_deref().unwrap_or("not reachable")
        )));
    }
    if report.partial + report.refused + report.not_sent > 0 {
        return Err(CliError::Partial(
            report.partial + report.refused + report.not_sent,
        ));
    }
    Ok(())
}

pub(super) async fn export(
    storage: &Storage,
    sel: ListQuery,
    format: Format,
    out_path: &Path,
    json: bool,
) -> Result<(), CliError> {
    let bar = bar(0, json);
    if let Some(b) = &bar {
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos} messages  {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
    }
    let progress = |r: &crate::model::Record| {
        if let Some(b) = &bar {
            b.inc(1);
            b.set_message(r.id.to_string());
        }
    };
    let report = export::export(storage, &sel, format, out_path, &progress)
        .await
        .map_err(|e| match e {
            export::ExportError::Store(e) => CliError::Store(e),
            other => CliError::Export(other.to_string()),
        })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    super::print_summary(json, &report, |out| {
        writeln!(
            out,
            "exported {} message(s), {} bytes, to {}",
            report.messages,
            report.bytes,
            report.out.display()
        )
    })
}
