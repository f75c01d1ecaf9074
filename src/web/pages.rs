//! The inbox's HTML, written with `maud` (checked at compile time, every value escaped).
//!
//! Plain forms and links: everything works without JavaScript, and the one stylesheet
//! (`/static/style.css`) makes it readable on a phone.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::render::Shown;
use crate::mailbox::{Folder, Search};
use crate::model::{Record, Status};

/// The frame of every page.
pub(super) fn layout(title: &str, user: Option<(&str, &str)>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · Emergency inbox" }
                link rel="stylesheet" href="/static/style.css";
            }
            body {
                header {
                    strong { "Emergency inbox" }
                    @if let Some((address, csrf)) = user {
                        nav {
                            a href="/compose" { "Write" }
                            " "
                            a href="/" { "Inbox" }
                            a href="/junk" { "Junk" }
                            " "
                            a href="/sent" { "Sent" }
                            span.user { (address) }
                            form method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The login page, with an error line when a login failed.
pub fn login(token: &str, error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            p.note { "Your mail server is unavailable. Mail sent to you is kept here until it is back." }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.login method="post" action="/login" {
                input type="hidden" name="csrf" value=(token);
                label { "Address" input type="text" name="username" autocomplete="username" autocapitalize="none" required; }
                label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
        },
    )
}

/// A one-time login link's page: the link is used only when the button is pressed, so a
/// mail scanner that fetches the link does not use it up.
pub fn login_link(token: &str, csrf: &str, address: &str) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            p.note { "Your mail server is unavailable. Mail sent to you is kept here until it is back." }
            form.login method="post" action="/login/link" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="t" value=(token);
                p { "Log in as " strong { (address) } " with this one-time link?" }
                button type="submit" { "Log in" }
            }
        },
    )
}

pub(super) fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

pub(super) fn status_label(s: Status) -> &'static str {
    match s {
        Status::Held | Status::Paused => "held",
        Status::Outbound => "sending",
        Status::Delivered => "delivered",
        Status::Journal => "copy",
        Status::Failed => "failed",
    }
}

/// One folder page.
pub struct ListPage<'a> {
    pub address: &'a str,
    pub csrf: &'a str,
    pub folder: Folder,
    pub search: &'a Search,
    /// The search as typed (dates as `YYYY-MM-DD`).
    pub typed: (&'a str, &'a str, &'a str, &'a str),
    pub messages: &'a [Record],
    /// The link to the next (older) page.
    pub older: Option<String>,
}

pub fn list(p: &ListPage<'_>) -> Markup {
    let (title, action) = match p.folder {
        Folder::Inbox => ("Inbox", "/"),
        Folder::Junk => ("Junk", "/junk"),
        Folder::Sent => ("Sent", "/sent"),
    };
    let searching = p.search != &Search::default();
    layout(
        title,
        Some((p.address, p.csrf)),
        html! {
            h1 { (title) }
            form.search method="get" action=(action) {
                label { "From" input type="search" name="from" value=(p.typed.0); }
                label { "Subject" input type="search" name="subject" value=(p.typed.1); }
                label { "Since" input type="date" name="since" value=(p.typed.2); }
                label { "Before" input type="date" name="until" value=(p.typed.3); }
                button type="submit" { "Search" }
                @if searching { a href=(action) { "Clear" } }
            }
            @if p.messages.is_empty() {
                p.empty { @if searching { "No message matches." } @else { "No messages." } }
            } @else {
                ul.messages {
                    @for r in p.messages {
                        li {
                            a href={ "/m/" (r.id) } {
                                span.from { (r.summary.from.as_deref().filter(|f| !f.is_empty()).unwrap_or(if r.mail_from.is_empty() { "(no sender)" } else { &r.mail_from })) }
                                span.subject { (r.summary.subject.as_deref().filter(|s| !s.is_empty()).unwrap_or("(no subject)")) }
                                span.date { (when(r.received_at)) }
                                span class={ "status " (status_label(r.status)) } { (status_label(r.status)) }
                            }
                        }
                    }
                }
            }
            @if let Some(href) = &p.older { p.more { a href=(href) { "Older messages" } } }
        },
    )
}

/// The message page.
pub struct MessagePage<'a> {
    pub address: &'a str,
    pub csrf: &'a str,
    pub record: &'a Record,
    pub shown: &'a Shown,
    pub images: bool,
}

pub fn message(p: &MessagePage<'_>) -> Markup {
    let s = p.shown;
    let id = p.record.id;
    let subject = if s.subject.is_empty() {
        "(no subject)"
    } else {
        &s.subject
    };
    layout(
        subject,
        Some((p.address, p.csrf)),
        html! {
            article.message {
                h1 { (subject) }
                dl.headers {
                    dt { "From" } dd { (s.from) }
                    @if !s.to.is_empty() { dt { "To" } dd { (s.to) } }
                    @if !s.cc.is_empty() { dt { "Cc" } dd { (s.cc) } }
                    dt { "Date" } dd { (if s.date.is_empty() { when(p.record.received_at) } else { s.date.clone() }) }
                    dt { "Received" } dd { (when(p.record.received_at)) " (" (status_label(p.record.status)) ")" }
                }
                p.actions {
                    a href={ "/compose?re=" (id) "&mode=reply" } { "Reply" }
                    " "
                    a href={ "/compose?re=" (id) "&mode=all" } { "Reply all" }
                    " "
                    a href={ "/compose?re=" (id) "&mode=forward" } { "Forward" }
                    " "
                    a href={ "/m/" (id) "/raw" } download { "Download .eml" }
                }
                @if !s.attachments.is_empty() {
                    ul.attachments {
                        @for a in &s.attachments {
                            li { a href={ "/m/" (id) "/att/" (a.index) } download=(a.name) { (a.name) } " (" (a.content_type) ", " (a.size) " bytes)" }
                        }
                    }
                }
                @if s.html {
                    @if s.remote_images && !p.images {
                        p.images { "Remote images are blocked. " a href={ "/m/" (id) "?images=1" } { "Show images" } }
                    }
                    iframe.body sandbox="allow-popups allow-popups-to-escape-sandbox" referrerpolicy="no-referrer"
                        title="Message" src={ "/m/" (id) "/body" @if p.images { "?images=1" } } {}
                } @else if let Some(text) = &s.text {
                    pre.body { (text) }
                }
            }
        },
    )
}

/// The compose form's values.
pub struct ComposePage<'a> {
    pub address: &'a str,
    pub csrf: &'a str,
    /// The addresses the user may send as (their own first).
    pub from: &'a [String],
    pub chosen_from: &'a str,
    pub to: &'a str,
    pub cc: &'a str,
    pub bcc: &'a str,
    pub subject: &'a str,
    pub body: &'a str,
    /// The message answered or forwarded: its id and the mode.
    pub re: Option<(String, &'a str)>,
    pub error: Option<&'a str>,
    /// Outside recipients cannot be reached (no `[outbound]` way out).
    pub internal_only: bool,
    /// The browser uploads attachments to the store itself ([`COMPOSE_JS`]).
    pub uploads: bool,
    /// Attachments uploaded already (a form shown again after an error): each one's
    /// hidden field value and its file name.
    pub uploaded: &'a [(String, String)],
    /// Attachments sent in the form are gone (a form shown again after an error).
    pub attachments_dropped: bool,
}

/// Writing a message (new, reply, forward).
pub fn compose(p: &ComposePage<'_>) -> Markup {
    let title = match p.re.as_ref().map(|(_, m)| *m) {
        Some("forward") => "Forward",
        Some(_) => "Reply",
        None => "New message",
    };
    layout(
        title,
        Some((p.address, p.csrf)),
        html! {
            h1 { (title) }
            @if let Some(e) = p.error { p.error role="alert" { (e) } }
            @if p.internal_only { p.note { "Only colleagues can be reached from here: sending to outside addresses is not set up." } }
            form.compose method="post" action="/compose" enctype="multipart/form-data"
                data-uploads=[p.uploads.then_some("1")] {
                input type="hidden" name="csrf" value=(p.csrf);
                @for (value, _) in p.uploaded {
                    input type="hidden" name="upload" value=(value);
                }
                @if let Some((id, mode)) = &p.re {
                    input type="hidden" name="re" value=(id);
                    input type="hidden" name="mode" value=(mode);
                }
                label { "From"
                    select name="from" {
                        @for a in p.from {
                            option value=(a) selected[a == p.chosen_from] { (a) }
                        }
                    }
                }
                label { "To" input type="text" name="to" value=(p.to) autocapitalize="none"; }
                label { "Cc" input type="text" name="cc" value=(p.cc) autocapitalize="none"; }
                label { "Bcc" input type="text" name="bcc" value=(p.bcc) autocapitalize="none"; }
                label { "Subject" input type="text" name="subject" value=(p.subject); }
                label { "Message" textarea name="body" rows="14" { (p.body) } }
                @if !p.uploaded.is_empty() {
                    p.note { "Attached: "
                        @for (i, (_, name)) in p.uploaded.iter().enumerate() {
                            @if i > 0 { ", " } (name)
                        }
                    }
                }
                @if p.attachments_dropped {
                    p.note { "Please choose your attachments again." }
                }
                label { "Attachments" input type="file" name="attachment" multiple; }
                @if p.uploads {
                    script src="/static/compose.js" defer {}
                    noscript { p.note { "Without JavaScript, attachments are limited to 6 MB together." } }
                    p.upload-status.note role="status" aria-live="polite" {}
                }
                @if matches!(p.re.as_ref().map(|(_, m)| *m), Some("forward")) {
                    p.note { "The original message is attached as it is." }
                }
                button type="submit" { "Send" }
            }
        },
    )
}

/// A page for an error (404, 429...).
pub fn error(title: &str, text: &str) -> Markup {
    layout(
        title,
        None,
        html! { h1 { (title) } p { (text) } p { a href="/" { "Inbox" } } },
    )
}

/// The compose form's script where the browser uploads attachments itself (the web
/// function): each chosen file is PUT to a URL the app presigns (`POST
/// /compose/upload`), the form then carries only the uploads' ids. Without it (or
/// without JavaScript) files go in the form, as everywhere else.
pub const COMPOSE_JS: &str = r#""use strict";
document.addEventListener("DOMContentLoaded", () => {
  const form = document.querySelector("form.compose[data-uploads]");
  if (!form) return;
  const input = form.querySelector("input[name=attachment]");
  const status = form.querySelector(".upload-status");
  const button = form.querySelector("button[type=submit]");
  let busy = false;
  // A page restored from the browser's cache takes a new send.
  window.addEventListener("pageshow", (ev) => {
    if (!ev.persisted) return;
    busy = false;
    button.disabled = false;
  });
  form.addEventListener("submit", async (ev) => {
    // Once: a second click while the first is on its way would send it twice.
    if (busy) {
      ev.preventDefault();
      return;
    }
    busy = true;
    if (!input || input.files.length === 0) {
      // The browser sends the form: a second click within a few seconds is the same
      // message; after that (a send stopped with Esc), Send works again.
      status.textContent = "Sending\u2026";
      setTimeout(() => {
        busy = false;
      }, 5000);
      return;
    }
    ev.preventDefault();
    button.disabled = true;
    const added = [];
    try {
      const csrf = form.querySelector("input[name=csrf]").value;
      for (const f of Array.from(input.files)) {
        status.textContent = "Uploading " + f.name + "…";
        const type = f.type || "application/octet-stream";
        const asked = await fetch("/compose/upload", {
          method: "POST",
          body: new URLSearchParams({ csrf: csrf, size: String(f.size) }),
        });
        if (!asked.ok) throw new Error(await asked.text());
        const slot = await asked.json();
        const put = await fetch(slot.url, { method: "PUT", body: f });
        if (!put.ok) throw new Error("the upload of " + f.name + " failed (" + put.status + ")");
        const field = document.createElement("input");
        field.type = "hidden";
        field.name = "upload";
        field.value = JSON.stringify({ id: slot.id, name: f.name, type: type });
        form.appendChild(field);
        added.push(field);
      }
      input.value = "";
      status.textContent = "Sending…";
      form.submit();
    } catch (e) {
      added.forEach((f) => f.remove());
      status.textContent = "Not sent: " + e.message;
      button.disabled = false;
      busy = false;
    }
  });
});
"#;

/// The stylesheet.
pub const CSS: &str = "
*{box-sizing:border-box}
body{margin:0;font:16px/1.4 system-ui,sans-serif;color:#1b1b1b;background:#fafafa}
header{display:flex;flex-wrap:wrap;gap:.5em 1em;align-items:center;justify-content:space-between;padding:.6em 1em;background:#12355b;color:#fff}
header a,header button{color:#fff}
nav{display:flex;flex-wrap:wrap;gap:.4em 1em;align-items:center}
nav form{display:inline}
nav button{background:none;border:1px solid #fff;border-radius:4px;padding:.2em .6em;cursor:pointer}
main{max-width:60em;margin:0 auto;padding:1em}
h1{font-size:1.3em;margin:.2em 0 .6em}
.note{color:#555}.error{color:#a00;font-weight:bold}
form.login{display:grid;gap:.8em;max-width:22em}
form.login label,form.search label{display:grid;gap:.2em}
input,button{font:inherit;padding:.4em}
form.search{display:flex;flex-wrap:wrap;gap:.5em;align-items:end;margin-bottom:1em}
ul.messages{list-style:none;margin:0;padding:0;border-top:1px solid #ddd}
ul.messages a{display:grid;grid-template-columns:14em 1fr auto auto;gap:.2em 1em;padding:.6em .3em;border-bottom:1px solid #ddd;color:inherit;text-decoration:none}
ul.messages a:hover{background:#eef3f8}
.from{font-weight:600;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.subject{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.date{color:#555;white-space:nowrap}
.status{font-size:.8em;padding:0 .4em;border-radius:3px;background:#e4e4e4;align-self:center}
.status.held{background:#ffe7b3}
@media (max-width:40em){ul.messages a{grid-template-columns:1fr auto}.subject{grid-column:1/3}.status{display:none}}
dl.headers{display:grid;grid-template-columns:auto 1fr;gap:.2em 1em;margin:0 0 1em}
dt{color:#555}dd{margin:0;overflow-wrap:anywhere}
pre.body{white-space:pre-wrap;overflow-wrap:anywhere;background:#fff;border:1px solid #ddd;padding:1em}
iframe.body{width:100%;height:70vh;border:1px solid #ddd;background:#fff}
.images{background:#fff4d6;padding:.4em .6em}
nav.console{display:flex;gap:1em;align-items:center;margin:.5em 0}
nav.console form{margin-left:auto}
table{border-collapse:collapse;margin:.6em 0}
th,td{text-align:left;padding:.3em .8em;border-bottom:1px solid #ddd;vertical-align:top}
form.inline{display:inline;margin:0 .2em 0 0}
.state-up{color:#2e7d32}.state-down{color:#c62828}
p.event{background:#fff4d6;padding:.4em .6em}
button.danger{background:#c62828;color:#fff;border:0;padding:.4em .8em}
figure.chart{margin:.6em 0}figure.chart figcaption{font-size:.85em;color:#555}
dl.record{display:grid;grid-template-columns:auto 1fr;gap:.2em 1em}
";
