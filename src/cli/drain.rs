//! `standby drain`: deliver now, with a progress bar on a terminal.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use super::CliError;
use super::inspect::ListItem;
use crate::config::Config;
use crate::drain::{Drainer, Progress, RunOptions};
use crate::ports::Storage;
use crate::ports::{Probe, SystemClock};
use crate::serve::drain_settings;
use crate::smtp::SmtpRelay;

pub(super) async fn drain(
    config: &Config,
    relay: SmtpRelay,
    storage: &Storage,
    force: bool,
    dry_run: bool,
    json: bool,
) -> Result<(), CliError> {
    let mut settings = drain_settings(config);
    settings.arc = crate::serve::arc_sealer(config)?;
    let relay = Arc::new(relay);
    let drainer = Drainer::new(
        storage.clone(),
        relay.clone(),
        Arc::new(SystemClock),
        settings,
    );
    if dry_run {
        let due = drainer.due().await?;
        let mut out = super::output::Human::unless_json(json, std::io::stdout().lock());
        if json {
            let items: Vec<ListItem<'_>> = due.iter().map(ListItem::from).collect();
            serde_json::to_writer_pretty(&mut out, &items).map_err(std::io::Error::from)?;
            writeln!(out)?;
        } else {
            for r in &due {
                let rcpts: Vec<&str> = r.pending().map(|x| x.address.as_str()).collect();
                writeln!(out, "{}  <{}> -> {}", r.id, r.mail_from, rcpts.join(", "))?;
            }
            writeln!(
                out,
                "{} message(s) would be sent to {}",
                due.len(),
                relay.address()
            )?;
        }
        return Ok(());
    }
    let index = storage.index.as_ref();
    let key = (config.node_id(), relay.address().to_string());
    if force {
        if let Some(halt) = crate::health::resume(index, (&key.0, &key.1)).await? {
            tracing::warn!(reason = %halt.reason, "--force: resuming a drain the circuit breaker halted");
        }
    } else {
        if let Some(halt) = crate::health::halted(index, (&key.0, &key.1)).await? {
            return Err(CliError::PrimaryDown(format!(
                "draining is halted since {}: {}; nothing was sent",
                halt.at.format("%Y-%m-%d %H:%M:%S UTC"),
                halt.reason
            )));
        }
        if let Err(e) = relay.probe().await {
            return Err(CliError::PrimaryDown(format!(
                "primary {} is not answering ({e}); nothing was sent. Use --force to try anyway.",
                relay.address()
            )));
        }
    }
    let bar = if !json && std::io::stderr().is_terminal() {
        let total = storage.index.count(crate::model::Status::Held).await?;
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len}  {eta} left  last: {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let progress: Option<Progress> = bar.clone().map(|b| {
        Arc::new(move |_, outcome| {
            b.inc(1);
            b.set_message(format!("{outcome:?}").to_lowercase());
        }) as Progress
    });
    // Without --force, the ramp counts from the primary's return as this node recorded
    // it (`serve` on this host); a node that records no health (an operator's laptop)
    // drains at `rate_per_sec`, as the drain function does without a record.
    let back_since = if force {
        None
    } else {
        let h = crate::health::load_for(index, &key.0, &key.1).await?;
        (h.state == crate::model::PrimaryState::Up)
            .then_some(h.since)
            .flatten()
    };
    let report = drainer
        .run(RunOptions {
            progress,
            force,
            back_since,
            ..Default::default()
        })
        .await
        .map_err(|e| match e {
            crate::drain::DrainError::Store(e) => CliError::Store(e),
            other => CliError::Drain(other),
        })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    crate::health::record_drain(index, (&key.0, &key.1), &report, chrono::Utc::now()).await?;
    super::print_summary(json, &report, |out| {
        writeln!(
            out,
            "delivered {}, deferred {}, failed {}",
            report.delivered, report.deferred, report.failed
        )?;
        if report.ambiguous > 0 {
            writeln!(
                out,
                "{} of the deferred got no reply to the final dot: the primary may have them, \
                 and the next attempt may deliver them twice",
                report.ambiguous
            )?;
        }
        if let Some(why) = &report.stopped {
            writeln!(out, "stopped early: {why}")?;
        }
        Ok(())
    })?;
    if report.unreachable {
        return Err(CliError::PrimaryDown(format!(
            "primary {} could not be reached: {}",
            relay.address(),
            report.stopped.as_deref().unwrap_or("unknown error")
        )));
    }
    Ok(())
}
