//! The operator console, `/console`, for the users listed in `[users] admins`: the
//! primary's health over time (an SVG chart drawn here, no script), the counts, the
//! oldest held message and the continuity event; the queue (list, search, one message,
//! and hold, release, retry, purge — purge asked again — and drain now); the events'
//! history; the audit log. Every change is [`crate::manage`]'s, the one the `standby`
//! command makes, audited as `console:<address>`; every form carries the session's CSRF
//! token. Anyone else gets 403 on every console URL, whatever the method.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Duration, Utc};
use maud::{Markup, html};
use serde::Deserialize;

use super::Web;
use super::handlers::{authed, forbidden, page, server_error};
use super::pages::{layout, status_label, when};
use crate::model::continuity::Event;
use crate::model::{MessageId, PrimaryState, Record, StateChange, Status};
use crate::ports::{AuditEntry, ListQuery};
use crate::status::StatusView;
use crate::users::Account;
use crate::web::session::Session;

type Shared = State<Arc<Web>>;

/// The chart's span.
const CHART_HOURS: i64 = 24;
/// Messages a queue page lists.
const QUEUE_PAGE: usize = 100;
/// Audit entries the console shows (newest first).
const AUDIT_PAGE: usize = 200;

/// The signed-in admin, or the response for anyone else (the login page for no
/// session, 403 for a user who is not an admin).
async fn admin(web: &Web, headers: &HeaderMap) -> Result<(Account, Session), Response> {
    let (account, session) = authed(web, headers).await?;
    if web
        .settings
        .admins
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&account.address))
    {
        Ok((account, session))
    } else {
        tracing::warn!(
            user = crate::model::redact(&account.address),
            "console: refused, not an admin"
        );
        Err(page(
            StatusCode::FORBIDDEN,
            super::pages::error(
                "Not allowed",
                "The console is for the standby's administrators.",
            ),
        ))
    }
}

/// The admin posting a console form with its CSRF token, or the response for anyone or
/// anything else.
async fn admin_post(
    web: &Web,
    headers: &HeaderMap,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Result<(Account, ActionForm), Response> {
    let (account, session) = admin(web, headers).await?;
    let Ok(Form(form)) = form else {
        return Err(forbidden());
    };
    if !session.csrf_ok(&form.csrf) {
        return Err(forbidden());
    }
    Ok((account, form))
}

fn nav(csrf: &str) -> Markup {
    html! {
        nav.console {
            a href="/console" { "Status" }
            " " a href="/console/queue" { "Queue" }
            " " a href="/console/events" { "Events" }
            " " a href="/console/audit" { "Audit" }
            " " a href="/" { "My inbox" }
            form method="post" action="/logout" {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Log out" }
            }
        }
    }
}

fn console_page(title: &str, csrf: &str, body: Markup) -> Response {
    page(
        StatusCode::OK,
        layout(title, None, html! { (nav(csrf)) h1 { (title) } (body) }),
    )
}

async fn view(web: &Web) -> Result<StatusView, Response> {
    let s = &web.settings;
    crate::status::gather_cached(&web.storage, &s.node, &s.primary, s.store.clone())
        .await
        .map_err(|e| server_error(&e))
}

#[derive(Deserialize, Default)]
pub(super) struct Notice {
    #[serde(default)]
    done: String,
    #[serde(default)]
    error: String,
}

fn notice(n: &Notice) -> Markup {
    html! {
        @if !n.done.is_empty() { p.note role="status" { (n.done) } }
        @if !n.error.is_empty() { p.error role="alert" { (n.error) } }
    }
}

/// `GET /console`: the status.
pub(super) async fn status(
    State(web): Shared,
    headers: HeaderMap,
    Query(n): Query<Notice>,
) -> Response {
    let (_, session) = match admin(&web, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let v = match view(&web).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let history = match crate::health::view(
        &*web.storage.index,
        &web.settings.node,
        &web.settings.primary,
    )
    .await
    {
        Ok(h) => h.history,
        Err(e) => return server_error(&e),
    };
    let now = web.clock.now();
    let p = &v.primary;
    let c = v.counts;
    let body = html! {
        (notice(&n))
        section.status {
            p { "Primary " strong { (p.address) } " is " strong class={"state-" (p.state)} { (p.state) }
                @if let Some(s) = p.since { " since " (when(s)) } }
            @if let Some(h) = &p.halted { p.error { "Draining halted since " (when(h.at)) ": " (h.reason) } }
            (chart(&history, p.state, p.since, now))
            table.counts {
                tr { th { "held" } th { "paused" } th { "delivered" } th { "failed" } th { "journal" } th { "sending" } }
                tr { td id="held" { (c.held) } td id="paused" { (c.paused) } td id="delivered" { (c.delivered) } td id="failed" { (c.failed) } td { (c.journal) } td { (c.outbound) } }
            }
            p { "Oldest held: " @match v.oldest_held { Some(t) => (when(t)), None => "none" } }
            @match &v.continuity {
                Some(ev) => p.event { "Continuity event " (ev.id) " since " (when(ev.started_at)) ": " (ev.reason) " (" a href="/console/events" { "events" } ")" },
                None => p { "No continuity event under way." },
            }
            form method="post" action="/console/drain" {
                input type="hidden" name="csrf" value=(session.csrf);
                button type="submit" { "Drain now" }
            }
        }
    };
    console_page("Console", &session.csrf, body)
}

/// The primary's state over the last [`CHART_HOURS`] as an SVG bar: green while up,
/// red while down, grey unknown; hour ticks below.
fn chart(
    history: &[StateChange],
    current: PrimaryState,
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Markup {
    let (w, h) = (720.0_f64, 40.0_f64);
    let start = now - Duration::hours(CHART_HOURS);
    let span = (now - start).num_seconds() as f64;
    let x =
        |t: DateTime<Utc>| ((t.max(start) - start).num_seconds() as f64 / span * w).clamp(0.0, w);
    // The state at the chart's start: the last change before it, else unknown (or the
    // current state when nothing changed in the span).
    let mut state = history
        .iter()
        .rev()
        .find(|c| c.at <= start)
        .map(|c| c.state)
        .unwrap_or(
            if history.iter().all(|c| c.at <= start) && since.is_none_or(|s| s <= start) {
                current
            } else {
                PrimaryState::Unknown
            },
        );
    // A record from before the history was kept: the current state from `since` on.
    let history: Vec<StateChange> = match (history.is_empty(), since) {
        (true, Some(s)) if s > start => vec![StateChange {
            at: s,
            state: current,
        }],
        _ => history.to_vec(),
    };
    let mut segments = Vec::new();
    let mut from = start;
    for c in history.iter().filter(|c| c.at > start && c.at <= now) {
        segments.push((from, c.at, state));
        from = c.at;
        state = c.state;
    }
    segments.push((from, now, state));
    let color = |s: PrimaryState| match s {
        PrimaryState::Up => "#2e7d32",
        PrimaryState::Down => "#c62828",
        PrimaryState::Unknown => "#9e9e9e",
    };
    html! {
        figure.chart {
            svg xmlns="http://www.w3.org/2000/svg" viewBox={"0 0 " (w) " " (h + 18.0)} width="100%" role="img" aria-label="The primary's health over the last 24 hours" {
                @for (a, b, s) in &segments {
                    rect x=(format!("{:.1}", x(*a))) y="0" width=(format!("{:.1}", (x(*b) - x(*a)).max(0.5))) height=(h) fill=(color(*s)) class={"seg " (s)} {
                        title { (s) " from " (when(*a)) " to " (when(*b)) }
                    }
                }
                @for i in 0..=CHART_HOURS / 6 {
                    @let t = start + Duration::hours(i * 6);
                    text x=(format!("{:.1}", x(t).min(w - 30.0))) y=(h + 14.0) font-size="11" { (t.format("%H:%M")) }
                }
            }
            figcaption { "The primary's health, last 24 hours (UTC): green up, red down, grey unknown." }
        }
    }
}

#[derive(Deserialize, Default)]
pub(super) struct QueueParams {
    #[serde(default)]
    status: String,
    #[serde(default)]
    rcpt: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    done: String,
    #[serde(default)]
    error: String,
}

fn status_of(s: &str) -> Option<Status> {
    match s {
        "held" => Some(Status::Held),
        "paused" => Some(Status::Paused),
        "delivered" => Some(Status::Delivered),
        "failed" => Some(Status::Failed),
        "journal" => Some(Status::Journal),
        "outbound" => Some(Status::Outbound),
        _ => None,
    }
}

fn some(s: &str) -> Option<String> {
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

/// `GET /console/queue`: messages, oldest first, filtered like `standby list`.
pub(super) async fn queue(
    State(web): Shared,
    headers: HeaderMap,
    Query(q): Query<QueueParams>,
) -> Response {
    let (_, session) = match admin(&web, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    // The queue is what is held: other statuses (the delivered archive) when asked for.
    let status = if q.status.is_empty() {
        "held"
    } else {
        q.status.as_str()
    };
    let query = ListQuery {
        status: status_of(status),
        rcpt: some(&q.rcpt),
        from: some(&q.from),
        subject: some(&q.subject),
        limit: Some(QUEUE_PAGE),
        ..ListQuery::default()
    };
    let recs = match web.storage.index.list(&query).await {
        Ok(r) => r,
        Err(e) => return server_error(&e),
    };
    let csrf = session.csrf.clone();
    let body = html! {
        (notice(&Notice { done: q.done.clone(), error: q.error.clone() }))
        form.search method="get" action="/console/queue" {
            label { "Status" select name="status" {
                @for s in ["held", "paused", "failed", "outbound", "delivered", "journal", "any"] {
                    option value=(s) selected[status == s] { (s) }
                }
            } }
            label { "Recipient" input type="search" name="rcpt" value=(q.rcpt); }
            label { "Sender" input type="search" name="from" value=(q.from); }
            label { "Subject" input type="search" name="subject" value=(q.subject); }
            button type="submit" { "Search" }
        }
        @if recs.is_empty() { p { "No messages." } }
        table.queue {
            @for r in &recs {
                tr id={"m-" (r.id)} {
                    td { a href={"/console/m/" (r.id)} { (r.id) } }
                    td.status { (status_label(r.status)) " (" (r.status) ")" }
                    td { (when(r.received_at)) }
                    td { (r.summary.subject.as_deref().unwrap_or("")) }
                    td { (actions(r, &csrf)) }
                }
            }
        }
    };
    console_page("Queue", &session.csrf, body)
}

fn actions(r: &Record, csrf: &str) -> Markup {
    let form = |action: &str, label: &str| {
        html! {
            form.inline method="post" action={"/console/m/" (r.id) "/" (action)} {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" name="do" value=(action) { (label) }
            }
        }
    };
    html! {
        @if matches!(r.status, Status::Held | Status::Outbound) { (form("hold", "Hold")) }
        @if r.status == Status::Paused { (form("release", "Release")) }
        @if r.status != Status::Delivered { (form("retry", "Retry")) }
        a.purge href={"/console/m/" (r.id) "/purge"} { "Purge…" }
    }
}

/// The admin and the message id of a console URL, or the response for anyone or
/// anything else (404 for an id that is none).
async fn admin_and_id(
    web: &Web,
    headers: &HeaderMap,
    id: &str,
) -> Result<(Account, Session, MessageId), Response> {
    let (account, session) = admin(web, headers).await?;
    let id = id
        .parse::<MessageId>()
        .map_err(|_| super::handlers::not_found_page())?;
    Ok((account, session, id))
}

/// `GET /console/m/{id}`: one message's record (no body: that is its recipients').
pub(super) async fn message(
    State(web): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (_, session, id) = match admin_and_id(&web, &headers, &id).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let rec = match web.storage.index.get(id).await {
        Ok(Some(r)) => r,
        Ok(None) => return super::handlers::not_found_page(),
        Err(e) => return server_error(&e),
    };
    let body = html! {
        dl.record {
            dt { "Status" } dd { (rec.status) }
            dt { "Received" } dd { (when(rec.received_at)) }
            dt { "From (envelope)" } dd { (rec.mail_from) }
            dt { "Recipients" } dd { @for r in &rec.rcpts { (r.address) " (" (format!("{:?}", r.status).to_lowercase()) ") " } }
            dt { "Subject" } dd { (rec.summary.subject.as_deref().unwrap_or("")) }
            dt { "Size" } dd { (rec.size) " bytes" }
            dt { "Attempts" } dd { (rec.attempts) ", next " (when(rec.next_attempt_at)) }
            @if let Some(why) = &rec.reason { dt { "Reason" } dd { (why) } }
        }
        (actions(&rec, &session.csrf))
    };
    console_page(&format!("Message {id}"), &session.csrf, body)
}

#[derive(Deserialize)]
pub(super) struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
}

fn back(done: Result<String, String>) -> Response {
    let q = match done {
        Ok(d) => serde_urlencoded::to_string([("done", d)]),
        Err(e) => serde_urlencoded::to_string([("error", e)]),
    }
    .unwrap_or_default();
    Redirect::to(&format!("/console/queue?{q}")).into_response()
}

/// `POST /console/m/{id}/{hold|release|retry}`.
pub(super) async fn act(
    State(web): Shared,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    let (account, _) = match admin_post(&web, &headers, form).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<MessageId>() else {
        return super::handlers::not_found_page();
    };
    let skew = web.settings.skew;
    let (result, verb) = match action.as_str() {
        "hold" => (crate::manage::hold(&web.storage, id, skew).await, "paused"),
        "release" => (
            crate::manage::release(&web.storage, id, skew).await,
            "released",
        ),
        "retry" => (
            crate::manage::retry(&web.storage, id, skew).await,
            "queued for delivery now",
        ),
        _ => return super::handlers::not_found_page(),
    };
    if result.is_ok() {
        let entry = AuditEntry::session(
            &format!("console-{action}"),
            &format!("console:{}", account.address),
            &format!("message {id}"),
            web.clock.now(),
        );
        if let Err(e) = web.storage.audit.append(&entry).await {
            tracing::error!(error = %e, "could not write the audit entry of a console change");
        }
    }
    tracing::info!(%id, action = action.as_str(), ok = result.is_ok(), user = crate::model::redact(&account.address), "console change");
    back(
        result
            .map(|()| format!("{id}: {verb}"))
            .map_err(|e| format!("{id}: {e}")),
    )
}

/// `GET /console/m/{id}/purge`: asks again.
pub(super) async fn purge_form(
    State(web): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (_, session, id) = match admin_and_id(&web, &headers, &id).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let body = html! {
        p.error { "Delete message " (id) " for good? Its record and its stored bytes go; this cannot be undone (a legal hold refuses it)." }
        form method="post" action={"/console/m/" (id) "/purge"} {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="confirm" value="yes";
            button.danger type="submit" { "Delete for good" }
            " " a href="/console/queue" { "Cancel" }
        }
    };
    console_page("Purge", &session.csrf, body)
}

/// `POST /console/m/{id}/purge` with `confirm=yes`.
pub(super) async fn purge(
    State(web): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    let (account, form) = match admin_post(&web, &headers, form).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<MessageId>() else {
        return super::handlers::not_found_page();
    };
    if form.confirm != "yes" {
        return Redirect::to(&format!("/console/m/{id}/purge")).into_response();
    }
    if let Some(prefix) = &web.settings.purge_only_under {
        match web.storage.index.get(id).await {
            Ok(Some(rec)) if !rec.blob_key().starts_with(prefix.as_str()) => {
                return back(Err(format!(
                    "{id}: this host may not delete mail SES stored (its policy); use `standby purge {id}`"
                )));
            }
            Ok(_) => {}
            Err(e) => return server_error(&e),
        }
    }
    let by = format!("console:{}", account.address);
    let result =
        crate::manage::purge(&web.storage, id, web.settings.skew, &by, "console purge").await;
    back(
        result
            .map(|()| format!("{id}: purged"))
            .map_err(|e| format!("{id}: {e}")),
    )
}

/// `POST /console/drain`: probe the primary now and, if it answers, deliver now (the
/// serve loop; the drain function's next run on AWS).
pub(super) async fn drain(
    State(web): Shared,
    headers: HeaderMap,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    let (account, _) = match admin_post(&web, &headers, form).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let now = web.clock.now();
    let asked = web
        .storage
        .events
        .mark_once(crate::continuity::DRAIN_NOW, now + Duration::minutes(10))
        .await;
    if let Err(e) = asked {
        return server_error(&e);
    }
    if let Some(n) = &web.drain_now {
        n.notify_one();
    }
    let entry = AuditEntry::session(
        "drain-now",
        &format!("console:{}", account.address),
        "asked from the console",
        now,
    );
    if let Err(e) = web.storage.audit.append(&entry).await {
        return server_error(&e);
    }
    let q = serde_urlencoded::to_string([(
        "done",
        "drain asked for: the primary is probed now and, if it answers, delivered to",
    )])
    .unwrap_or_default();
    Redirect::to(&format!("/console?{q}")).into_response()
}

/// `GET /console/events`: the event under way and the history.
pub(super) async fn events(State(web): Shared, headers: HeaderMap) -> Response {
    let (_, session) = match admin(&web, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let c = match web.storage.events.load().await {
        Ok(c) => c,
        Err(e) => return server_error(&e),
    };
    let row = |ev: &Event| {
        html! {
            tr {
                td { (ev.id) }
                td { (when(ev.started_at)) }
                td { @match ev.ended_at { Some(t) => (when(t)), None => strong { "under way" } } }
                td { (ev.started_by) @if let Some(by) = &ev.ended_by { " / " (by) } }
                td { (ev.reason) }
                td { (ev.told) }
            }
        }
    };
    let body = html! {
        table.events {
            tr { th { "event" } th { "started" } th { "ended" } th { "by" } th { "why" } th { "users told" } }
            @if let Some(ev) = &c.current { (row(ev)) }
            @for ev in &c.history { (row(ev)) }
        }
        @if c.current.is_none() && c.history.is_empty() { p { "No continuity event yet." } }
        @if !c.pending.is_empty() { p { (c.pending.len()) " alerts still to send." } }
    };
    console_page("Events", &session.csrf, body)
}

/// `GET /console/audit`: the newest entries first.
pub(super) async fn audit(State(web): Shared, headers: HeaderMap) -> Response {
    let (_, session) = match admin(&web, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let entries = match web.storage.audit.recent(AUDIT_PAGE).await {
        Ok(e) => e,
        Err(e) => return server_error(&e),
    };
    let body = html! {
        table.audit {
            tr { th { "when" } th { "what" } th { "message" } th { "by" } th { "why" } }
            @for e in &entries {
                tr {
                    td { (when(e.at)) }
                    td { (e.action) }
                    td { @if let Some(id) = e.id { (id) } }
                    td { (e.by) }
                    td { (e.reason) }
                }
            }
        }
    };
    console_page("Audit log", &session.csrf, body)
}

/// Anything else under `/console/` (any method): 403 for non-admins, 404 otherwise.
pub(super) async fn other(State(web): Shared, headers: HeaderMap) -> Response {
    match admin(&web, &headers).await {
        Ok(_) => super::handlers::not_found_page(),
        Err(r) => r,
    }
}
