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
    let settings = drain_settings(config);
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
    if !force && let Err(e) = relay.probe().await {
        return Err(CliError::PrimaryDown(format!(
            "primary {} is not answering ({e}); nothing was sent. Use --force to try anyway.",
            relay.address()
        )));
    }
    let bar = if !json && std::io::stderr().is_terminal() {
        let total = storage.index.counts().await?.held;
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
    let report = drainer
        .run(RunOptions {
            progress,
            ..Default::default()
        })
        .await
        .map_err(|crate::drain::DrainError::Store(e)| CliError::Store(e))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let index = storage.index.as_ref();
    let key = (config.node_id(), relay.address().to_string());
    crate::health::record_drain(index, (&key.0, &key.1), &report, chrono::Utc::now()).await?;
    super::print_summary(json, &report, |out| {
        writeln!(
            out,
            "delivered {}, deferred {}, failed {}",
            report.delivered, report.deferred, report.failed
        )?;
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
