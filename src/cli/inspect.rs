//! `standby status`, `list` and `show`: read-only views of the spool.

use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::CliError;
use super::output::{Human, address, field};
use crate::config::Config;
use crate::model::{Bounce, Intake, MessageId, Record, Status};
use crate::ports::Storage;
use crate::ports::{ListQuery, Pages};

/// One line of `standby list --json`.
#[derive(Serialize)]
pub(super) struct ListItem<'a> {
    id: MessageId,
    status: Status,
    mail_from: &'a str,
    rcpt_to: Vec<&'a str>,
    size: u64,
    received_at: DateTime<Utc>,
    message_id: Option<&'a str>,
    subject: Option<&'a str>,
    attempts: u32,
    intake: Intake,
    /// Why it failed (failed messages).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    /// The DSN queued for a failed message, or why it was parked without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    bounce: Option<&'a Bounce>,
}

impl<'a> From<&'a Record> for ListItem<'a> {
    fn from(r: &'a Record) -> Self {
        ListItem {
            id: r.id,
            status: r.status,
            mail_from: &r.mail_from,
            rcpt_to: r.rcpts.iter().map(|x| x.address.as_str()).collect(),
            size: r.size,
            received_at: r.received_at,
            message_id: r.summary.message_id.as_deref(),
            subject: r.summary.subject.as_deref(),
            attempts: r.attempts,
            intake: r.intake,
            reason: r.reason.as_deref(),
            bounce: r.bounce.as_ref(),
        }
    }
}

/// One line on what became of a failed message's bounce.
fn bounce_text(b: &Bounce) -> String {
    match b {
        Bounce::Queued { id } => format!("DSN {id} queued to the sender"),
        Bounce::Suppressed { why } => format!("parked, no DSN: {why}"),
    }
}

fn ago(t: DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

pub(super) async fn status(config: &Config, storage: &Storage, json: bool) -> Result<(), CliError> {
    let view = crate::status::gather(
        storage,
        &config.node_id(),
        &config.primary_addr(),
        config.store_description(),
    )
    .await?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &view).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    let mut out = Human::new(out);
    let p = &view.primary;
    writeln!(out, "store     {}", view.store)?;
    write!(out, "primary   {}  {}", p.address, p.state)?;
    if let Some(since) = p.since {
        write!(out, " since {} ({})", time(since), ago(since))?;
    }
    writeln!(out)?;
    match &p.last_probe {
        Some(probe) => writeln!(
            out,
            "probe     {} {}: {}",
            if probe.ok { "ok" } else { "FAILED" },
            ago(probe.at),
            field(&probe.detail)
        )?,
        None => writeln!(out, "probe     none yet (is `standby serve` running?)")?,
    }
    if let Some(d) = &p.last_drain {
        write!(
            out,
            "drain     {}: delivered {}, deferred {}, failed {}",
            ago(d.at),
            d.report.delivered,
            d.report.deferred,
            d.report.failed
        )?;
        if d.report.ambiguous > 0 {
            write!(
                out,
                " ({} without a reply to the final dot: possible duplicates)",
                d.report.ambiguous
            )?;
        }
        match &d.report.stopped {
            Some(why) => writeln!(out, "; stopped: {}", field(why))?,
            None => writeln!(out)?,
        }
    }
    if let Some(h) = &p.halted {
        writeln!(
            out,
            "halted    since {} ({}): {}",
            time(h.at),
            ago(h.at),
            h.reason
        )?;
    }
    // Several nodes share this index (serve nodes, the drain function): one line each.
    if view.nodes.len() > 1 {
        for (i, n) in view.nodes.iter().enumerate() {
            let probe = n
                .last_probe
                .as_ref()
                .map_or("no probe yet".to_string(), |p| {
                    format!("probe {} {}", if p.ok { "ok" } else { "FAILED" }, ago(p.at))
                });
            let drain = n.last_drain.as_ref().map_or(String::new(), |d| {
                format!("; drain {}: delivered {}", ago(d.at), d.report.delivered)
            });
            writeln!(
                out,
                "{}{}  {} {}  {probe}{drain}",
                if i == 0 { "nodes     " } else { "          " },
                n.node,
                n.address,
                n.state
            )?;
        }
    }
    let c = view.counts;
    writeln!(
        out,
        "messages  held {}  paused {}  delivered {}  failed {}",
        c.held, c.paused, c.delivered, c.failed
    )?;
    if c.outbound > 0 {
        writeln!(out, "sending   {} to outside recipients", c.outbound)?;
    }
    if let Some(t) = view.oldest_held {
        writeln!(out, "oldest    held since {} ({})", time(t), ago(t))?;
    }
    if let Some(ev) = &view.continuity {
        writeln!(
            out,
            "event     continuity event {} since {} ({}): {}",
            ev.id,
            time(ev.started_at),
            ago(ev.started_at),
            field(&ev.reason)
        )?;
    }
    Ok(())
}

pub(super) async fn list(storage: &Storage, query: ListQuery, json: bool) -> Result<(), CliError> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // A page at a time: `standby list | head` returns after the first page however many
    // messages are held, and memory stays flat for any number.
    let mut pages = Pages::new(query);
    let mut listed = 0usize;
    while let Some(page) = pages.next(storage.index.as_ref()).await? {
        let written = if json {
            list_json(&mut out, &page, listed == 0)
        } else {
            list_lines(&mut Human::new(&mut out), &page, listed == 0)
        };
        match written {
            // `standby list | head`: the reader has all it wants; stop reading pages.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other?,
        }
        listed += page.len();
    }
    if json {
        ignore_pipe(writeln!(out, "{}]", if listed == 0 { "[" } else { "\n" }))?;
    } else if listed == 0 {
        ignore_pipe(writeln!(out, "no messages"))?;
    }
    ignore_pipe(out.flush())
}

/// One page of a JSON array written as it is read: `[` before the first page's first
/// item, a comma between items; the caller closes the array.
fn list_json(out: &mut impl Write, page: &[Record], first_page: bool) -> std::io::Result<()> {
    for (i, r) in page.iter().enumerate() {
        let sep = match (first_page, i) {
            (true, 0) => "[\n",
            _ => ",\n",
        };
        out.write_all(sep.as_bytes())?;
        serde_json::to_writer(&mut *out, &ListItem::from(r))?;
    }
    Ok(())
}

/// One page as table rows, after the header when it is the first.
fn list_lines(out: &mut impl Write, page: &[Record], first_page: bool) -> std::io::Result<()> {
    if first_page && !page.is_empty() {
        writeln!(
            out,
            "{:<26}  {:<9}  {:<19}  {:>9}  {:<28}  SUBJECT",
            "ID", "STATUS", "RECEIVED", "SIZE", "FROM -> TO"
        )?;
    }
    for r in page {
        let to = match r.rcpts.len() {
            0 => "-".to_string(),
            1 => address(&r.rcpts[0].address).into_owned(),
            n => format!("{} (+{})", address(&r.rcpts[0].address), n - 1),
        };
        let from = if r.mail_from.is_empty() {
            "<>".into()
        } else {
            address(&r.mail_from)
        };
        writeln!(
            out,
            "{:<26}  {:<9}  {:<19}  {:>9}  {:<28}  {}",
            r.id.to_string(),
            r.status.as_str(),
            time(r.received_at),
            r.size,
            format!("{from} -> {to}"),
            field(r.summary.subject.as_deref().unwrap_or(""))
        )?;
        if r.status == Status::Failed {
            let why = field(r.reason.as_deref().unwrap_or("failed"));
            let bounce = r.bounce.as_ref().map(bounce_text).unwrap_or_default();
            writeln!(out, "{:<28}{why}; {}", "", field(&bounce))?;
        }
    }
    Ok(())
}

pub(super) async fn audit(storage: &Storage, json: bool) -> Result<(), CliError> {
    let entries = storage.audit.entries().await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if json {
        serde_json::to_writer_pretty(&mut out, &entries).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return ignore_pipe(out.flush());
    }
    let mut out = Human::new(out);
    if entries.is_empty() {
        writeln!(out, "no audit entries")?;
        return Ok(());
    }
    for e in &entries {
        let line = writeln!(
            out,
            "{}  {:<13}  {}  {:<9}  by {}: {}",
            time(e.at),
            e.action,
            e.id.map_or_else(|| "-".repeat(26), |i| i.to_string()),
            e.status.map_or("-", |s| s.as_str()),
            field(&e.by),
            field(&e.reason)
        );
        ignore_pipe(line)?;
    }
    ignore_pipe(out.flush())
}

/// `standby list | head` closes the pipe early; that is not an error.
fn ignore_pipe(r: std::io::Result<()>) -> Result<(), CliError> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

pub(super) async fn show(
    storage: &Storage,
    id: MessageId,
    json: bool,
    raw: bool,
) -> Result<(), CliError> {
    let rec = storage
        .index
        .get(id)
        .await?
        .ok_or(crate::error::StoreError::NotFound(id))?;
    if raw {
        let mut body = storage.blobs.open(&rec.blob_key()).await?;
        let mut stdout = tokio::io::stdout();
        tokio::io::copy(&mut body, &mut stdout).await?;
        stdout.flush().await?;
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &rec).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    let mut out = Human::new(out);
    writeln!(out, "id          {}", rec.id)?;
    writeln!(out, "status      {}", rec.status)?;
    if let Some(reason) = &rec.reason {
        writeln!(out, "reason      {}", field(reason))?;
    }
    if let Some(b) = &rec.bounce {
        writeln!(out, "bounce      {}", field(&bounce_text(b)))?;
    }
    writeln!(out, "intake      {}", rec.intake.as_str())?;
    if let Some(v) = &rec.verdicts {
        let show = |x: &Option<String>| x.as_deref().unwrap_or("-").to_string();
        writeln!(
            out,
            "verdicts    spf {}  dkim {}  dmarc {}  spam {}  virus {}",
            show(&v.spf),
            show(&v.dkim),
            show(&v.dmarc),
            show(&v.spam),
            show(&v.virus)
        )?;
    }
    writeln!(
        out,
        "received    {} from {} [{}]{}",
        time(rec.received_at),
        field(&rec.origin.helo),
        field(&rec.origin.ip),
        if rec.origin.tls { " with TLS" } else { "" }
    )?;
    writeln!(out, "size        {} bytes  sha256 {}", rec.size, rec.sha256)?;
    writeln!(out, "mail from   <{}>", address(&rec.mail_from))?;
    for r in &rec.rcpts {
        writeln!(
            out,
            "rcpt to     <{}>  {:?}{}",
            address(&r.address),
            r.status,
            r.reply
                .as_deref()
                .map(|x| format!("  ({})", field(x)))
                .unwrap_or_default()
        )?;
    }
    let s = &rec.summary;
    writeln!(
        out,
        "message-id  {}",
        field(s.message_id.as_deref().unwrap_or("-"))
    )?;
    writeln!(
        out,
        "from        {}",
        field(s.from.as_deref().unwrap_or("-"))
    )?;
    writeln!(
        out,
        "subject     {}",
        field(s.subject.as_deref().unwrap_or("-"))
    )?;
    writeln!(
        out,
        "date        {}",
        field(s.date.as_deref().unwrap_or("-"))
    )?;
    writeln!(
        out,
        "attempts    {}  next {}",
        rec.attempts,
        time(rec.next_attempt_at)
    )?;
    Ok(())
}
