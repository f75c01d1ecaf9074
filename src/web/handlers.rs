//! The inbox's request handlers: wiring between HTTP and [`crate::mailbox`], the users
//! and the sessions. A message outside the user's mailbox and a message that does not
//! exist get the same 404 page.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{NaiveDate, TimeZone, Utc};
use serde::Deserialize;

use super::session::{LOGIN_COOKIE, SESSION_COOKIE, Session, SessionKey};
use super::{ClientIp, Web, pages, render};
use crate::mailbox::{Folder, Search, View};
use crate::model::{MessageId, Record};
use crate::ports::{AuditEntry, Cursor};
use crate::users::Account;

type Shared = State<Arc<Web>>;

/// The value of cookie `name` in the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A cookie's name: with the `__Host-` prefix over HTTPS, so the browser takes it only
/// from this host, set Secure on the whole site (a sibling subdomain cannot plant one).
fn cookie_name(web: &Web, name: &str) -> String {
    if web.settings.secure {
        format!("__Host-{name}")
    } else {
        name.to_string()
    }
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, whole site; Secure over HTTPS;
/// `max_age` 0 removes it, `None` makes it end with the browser (the session: on a
/// borrowed computer on the bad day, closing the browser logs out; the signed expiry
/// still applies).
fn set_cookie(web: &Web, name: &str, value: &str, max_age: Option<i64>) -> HeaderValue {
    let secure = if web.settings.secure { "; Secure" } else { "" };
    let age = max_age
        .map(|a| format!("; Max-Age={a}"))
        .unwrap_or_default();
    let v = format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict{age}{secure}",
        cookie_name(web, name)
    );
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The logged-in user and their session, or the way to the login page.
pub(super) async fn authed(web: &Web, headers: &HeaderMap) -> Result<(Account, Session), Response> {
    let to_login = || Redirect::to("/login").into_response();
    let value = cookie(headers, &cookie_name(web, SESSION_COOKIE)).ok_or_else(to_login)?;
    let claimed = SessionKey::claimed(value).ok_or_else(to_login)?;
    let account = web
        .users
        .directory()
        .await
        .account(&claimed)
        .ok_or_else(to_login)?;
    let session = web
        .key
        .check(value, &account, web.clock.now().timestamp())
        .ok_or_else(to_login)?;
    Ok((account, session))
}

pub(super) fn page(status: StatusCode, markup: maud::Markup) -> Response {
    (status, markup).into_response()
}

pub(super) fn not_found_page() -> Response {
    page(
        StatusCode::NOT_FOUND,
        pages::error("Not found", "There is no such message here."),
    )
}

pub(super) fn server_error(e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "web request failed");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        pages::error(
            "Try again",
            "The mail store did not answer. Try again in a moment.",
        ),
    )
}

pub(super) async fn not_found() -> Response {
    not_found_page()
}

/// One of the app's own static files, cached for an hour.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn css() -> Response {
    asset("text/css; charset=utf-8", pages::CSS)
}

pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", pages::COMPOSE_JS)
}

pub(super) async fn login_form(State(web): Shared, headers: HeaderMap) -> Response {
    if authed(&web, &headers).await.is_ok() {
        return Redirect::to("/").into_response();
    }
    let (nonce, token) = web.key.login_nonce();
    let mut resp = page(StatusCode::OK, pages::login(&token, None));
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&web, LOGIN_COOKIE, &nonce, Some(3600)),
    );
    resp
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

/// The longest user name (an address is at most 254 bytes) and password accepted.
const MAX_NAME: usize = 254;
const MAX_PASSWORD: usize = 1024;
/// A failed login answers no sooner than this after it arrived.
const FAILED_LOGIN_TIME: std::time::Duration = std::time::Duration::from_millis(600);

/// What the audit log keeps of a typed name: printable, at most 100 characters.
fn clip(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(100).collect()
}

pub(super) async fn login(
    State(web): Shared,
    ip: Option<Extension<ClientIp>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    // No form at all is a request without the token.
    let Ok(Form(form)) = form else {
        return forbidden();
    };
    let Some(nonce) = cookie(&headers, &cookie_name(&web, LOGIN_COOKIE)) else {
        return forbidden();
    };
    if !web.key.login_token_ok(nonce, &form.csrf) {
        return forbidden();
    }
    let token = form.csrf.clone();
    let started = tokio::time::Instant::now();
    // An address is at most 254 bytes; no password needs more than 1 KiB, and a longer
    // one would only make the hash check expensive (SHA-crypt's cost grows with it).
    if form.username.len() > MAX_NAME || form.password.len() > MAX_PASSWORD {
        return page(
            StatusCode::UNAUTHORIZED,
            pages::login(&token, Some("Wrong address or password.")),
        );
    }
    let ip = ip.map_or_else(|| "unknown".to_string(), |Extension(ip)| ip.limit_key());
    let dir = web.users.directory().await;
    let name = dir
        .address_of(&form.username)
        .unwrap_or_else(|| clip(&form.username).to_lowercase());
    let now = web.clock.now();
    let s = &web.settings;
    let keys = [format!("ip:{ip}"), format!("user:{name}")];
    // Logins still being checked count too: parallel attempts cannot all pass the limit
    // before the first failure is recorded.
    let Some(checking) = web.in_flight.start(&keys, s.attempts) else {
        tracing::warn!("emergency inbox: login refused, too many attempts at once");
        return too_many(s.attempt_window);
    };
    for key in &keys {
        let busy = checking.others(key);
        match web
            .limits
            .blocked(
                key,
                now,
                s.attempt_window,
                s.attempts.saturating_sub(busy).max(1),
            )
            .await
        {
            Ok(None) => {}
            Ok(Some(wait)) => {
                tracing::warn!(
                    limit = key.split(':').next().unwrap_or(""),
                    "emergency inbox: login refused, too many failed attempts"
                );
                return too_many(wait);
            }
            Err(e) => return server_error(&e),
        }
    }
    let (typed, password) = (form.username.clone(), form.password.clone());
    // Hash checks take tens of milliseconds of CPU each: a few at a time, so a flood of
    // logins queues instead of taking every core (and the SMTP listener with them). The
    // slot goes with the check, which runs to its end even when the client has gone.
    let Ok(slot) = web.checks.clone().acquire_owned().await else {
        return server_error(&"shutting down");
    };
    let slowest = web.slowest_check.clone();
    let verified = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let t = std::time::Instant::now();
        let account = dir.verify(&typed, &password);
        let ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
        slowest.fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
        account
    })
    .await;
    let account = match verified {
        Ok(a) => a,
        Err(e) => return server_error(&e),
    };
    let from = format!("from {ip}");
    let Some(account) = account else {
        for key in &keys {
            if let Err(e) = web.limits.failed(key, now, s.attempt_window).await {
                return server_error(&e);
            }
        }
        let entry = AuditEntry::session("login-failed", &format!("web:{name}"), &from, now);
        if let Err(e) = web.storage.audit.append(&entry).await {
            return server_error(&e);
        }
        tracing::info!("emergency inbox: failed login");
        // Every failed login takes as long, whatever the user's hash scheme and cost, or
        // whether the user exists: the time tells nothing.
        // A user's hash can be slower to check than the floor (Dovecot's Argon2id at
        // 64 MiB on a small Lambda): then the slowest check seen, and a margin, is.
        let slowest = std::time::Duration::from_millis(
            web.slowest_check.load(std::sync::atomic::Ordering::Relaxed),
        );
        tokio::time::sleep_until(started + FAILED_LOGIN_TIME.max(slowest * 5 / 4)).await;
        return page(
            StatusCode::UNAUTHORIZED,
            pages::login(&token, Some("Wrong address or password.")),
        );
    };
    let entry = AuditEntry::session("login", &format!("web:{}", account.address), &from, now);
    if let Err(e) = web.storage.audit.append(&entry).await {
        return server_error(&e);
    }
    tracing::info!(
        user = crate::model::redact(&account.address),
        "emergency inbox: login"
    );
    logged_in(&web, &account, now)
}

#[derive(Deserialize)]
pub(super) struct LinkQuery {
    #[serde(default)]
    t: String,
}

/// The longest link token taken (an address, an event id, the nonce and the MAC).
const MAX_LINK: usize = 1024;

fn link_refused(why: &str) -> Response {
    page(
        StatusCode::FORBIDDEN,
        pages::error(
            "Link not valid",
            &format!(
                "{why} Log in with your address and password, or ask your administrator for a new link."
            ),
        ),
    )
}

/// `GET /login/link?t=`: a continuity notice's one-time link. Checked (signature,
/// expiry), then a page whose button logs in: fetching the link uses nothing up.
pub(super) async fn link_form(
    State(web): Shared,
    axum::extract::Query(q): axum::extract::Query<LinkQuery>,
) -> Response {
    if q.t.len() > MAX_LINK {
        return link_refused("This link is not one of ours.");
    }
    let Some(link) = web.key.check_link(&q.t, web.clock.now().timestamp()) else {
        return link_refused("This link is not valid or has expired.");
    };
    let (nonce, csrf) = web.key.login_nonce();
    let mut resp = page(
        StatusCode::OK,
        pages::login_link(&q.t, &csrf, &link.address),
    );
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&web, LOGIN_COOKIE, &nonce, Some(3600)),
    );
    resp
}

#[derive(Deserialize)]
pub(super) struct LinkForm {
    #[serde(default)]
    t: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /login/link`: log in with a one-time link, once. The link's nonce is marked
/// used in the store (a conditional write), so a second use, from any instance, is
/// refused; a user removed meanwhile gets no session.
pub(super) async fn link_login(
    State(web): Shared,
    ip: Option<Extension<ClientIp>>,
    headers: HeaderMap,
    form: Result<Form<LinkForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return forbidden();
    };
    let Some(nonce) = cookie(&headers, &cookie_name(&web, LOGIN_COOKIE)) else {
        return forbidden();
    };
    if !web.key.login_token_ok(nonce, &form.csrf) || form.t.len() > MAX_LINK {
        return forbidden();
    }
    let now = web.clock.now();
    let Some(link) = web.key.check_link(&form.t, now.timestamp()) else {
        return link_refused("This link is not valid or has expired.");
    };
    let ip = ip.map_or_else(|| "unknown".to_string(), |Extension(ip)| ip.limit_key());
    let from = format!("from {ip}");
    // A used link tried again counts as a failed login of its address: the same limit
    // stops anyone replaying links (and filling the audit log).
    let s = &web.settings;
    let limit = format!("ip:{ip}");
    match web
        .limits
        .blocked(&limit, now, s.attempt_window, s.attempts)
        .await
    {
        Ok(None) => {}
        Ok(Some(wait)) => return too_many(wait),
        Err(e) => return server_error(&e),
    }
    let Some(account) = web.users.directory().await.account(&link.address) else {
        return link_refused("There is no emergency inbox account for this address.");
    };
    let keep = chrono::DateTime::from_timestamp(link.expires, 0).unwrap_or(now)
        + chrono::Duration::days(1);
    match web
        .storage
        .events
        .mark_once(&format!("link#{}", link.nonce), keep)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            if let Err(e) = web.limits.failed(&limit, now, s.attempt_window).await {
                return server_error(&e);
            }
            let entry = AuditEntry::session(
                "login-link-reused",
                &format!("web:{}", account.address),
                &from,
                now,
            );
            if let Err(e) = web.storage.audit.append(&entry).await {
                return server_error(&e);
            }
            return link_refused("This link was used already: each link logs in once.");
        }
        Err(e) => return server_error(&e),
    }
    let reason = format!("{from}, one-time link of event {}", link.event);
    let entry = AuditEntry::session("login", &format!("web:{}", account.address), &reason, now);
    if let Err(e) = web.storage.audit.append(&entry).await {
        return server_error(&e);
    }
    tracing::info!(
        user = crate::model::redact(&account.address),
        "emergency inbox: login with a one-time link"
    );
    logged_in(&web, &account, now)
}

/// The answer to a login that succeeded (by password or one-time link): the session
/// cookie set, the login form's nonce cleared, on to the inbox.
fn logged_in(web: &Web, account: &Account, now: chrono::DateTime<chrono::Utc>) -> Response {
    let expires = now + web.settings.session;
    let value = web.key.issue(account, expires.timestamp());
    let mut resp = Redirect::to("/").into_response();
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(web, SESSION_COOKIE, &value, None),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(web, LOGIN_COOKIE, "", Some(0)),
    );
    resp
}

/// `GET /metrics`: Prometheus's text format (see [`crate::metrics`]), only with the
/// bearer token `[metrics] token_env` names; without one configured, not here (404).
pub(super) async fn metrics(State(web): Shared, headers: HeaderMap) -> Response {
    let s = &web.settings;
    let Some(token) = &s.metrics_token else {
        return not_found().await;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Digests compared, so neither the token's length nor its bytes show in the time.
    use sha2::Digest;
    let (a, b) = (sha2::Sha256::digest(given), sha2::Sha256::digest(token));
    let ok: bool = subtle::ConstantTimeEq::ct_eq(a.as_slice(), b.as_slice()).into();
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is needed\n",
        )
            .into_response();
    }
    match crate::status::exposition(&web.storage, &s.node, &s.primary, s.store.clone()).await {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics: the store did not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the store did not answer\n",
            )
                .into_response()
        }
    }
}

pub(super) fn forbidden() -> Response {
    page(
        StatusCode::FORBIDDEN,
        pages::error(
            "Form expired",
            "This form is no longer valid. Go back, reload the page and try again.",
        ),
    )
}

fn too_many(wait: chrono::Duration) -> Response {
    let secs = wait.num_seconds().max(1);
    let mut resp = page(
        StatusCode::TOO_MANY_REQUESTS,
        pages::error(
            "Too many attempts",
            &format!("Too many login attempts. Try again in {secs} seconds."),
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(super) async fn logout(
    State(web): Shared,
    ip: Option<Extension<ClientIp>>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let (account, session) = match authed(&web, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let token = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if !session.csrf_ok(&token) {
        return forbidden();
    }
    let ip = ip.map_or_else(
        || "unknown".to_string(),
        |Extension(ClientIp(a))| a.to_string(),
    );
    let entry = AuditEntry::session(
        "logout",
        &format!("web:{}", account.address),
        &format!("from {ip}"),
        web.clock.now(),
    );
    if let Err(e) = web.storage.audit.append(&entry).await {
        return server_error(&e);
    }
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&web, SESSION_COOKIE, "", Some(0)),
    );
    resp
}

#[derive(Deserialize, Default)]
pub(super) struct ListParams {
    #[serde(default)]
    from: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    /// `<received ms>-<id>`: the last message of the previous page.
    #[serde(default)]
    before: String,
}

fn day(s: &str) -> Option<chrono::DateTime<Utc>> {
    let d = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()?;
    Utc.from_local_datetime(&d.and_hms_opt(0, 0, 0)?).single()
}

fn cursor_of(s: &str) -> Option<Cursor> {
    let (ms, id) = s.split_once('-')?;
    Some(Cursor {
        received_at: chrono::DateTime::from_timestamp_millis(ms.parse().ok()?)?,
        id: id.parse().ok()?,
    })
}

pub(super) async fn inbox(
    State(web): Shared,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> Response {
    list(web, headers, p, Folder::Inbox).await
}

pub(super) async fn junk(
    State(web): Shared,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> Response {
    list(web, headers, p, Folder::Junk).await
}

pub(super) async fn sent(
    State(web): Shared,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> Response {
    list(web, headers, p, Folder::Sent).await
}

async fn list(web: Arc<Web>, headers: HeaderMap, p: ListParams, folder: Folder) -> Response {
    let (account, session) = match authed(&web, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let search = Search {
        from: Some(p.from.trim().to_string()).filter(|s| !s.is_empty()),
        subject: Some(p.subject.trim().to_string()).filter(|s| !s.is_empty()),
        since: day(&p.since),
        // "Before" a day: up to its midnight.
        until: day(&p.until),
    };
    let view = View {
        account: &account,
        history_days: web.settings.history_days,
        now: web.clock.now(),
    };
    let after = cursor_of(&p.before);
    let got = view
        .page(
            web.storage.index.as_ref(),
            folder,
            &search,
            after,
            web.settings.page_size,
        )
        .await;
    let got = match got {
        Ok(g) => g,
        Err(e) => return server_error(&e),
    };
    let base = match folder {
        Folder::Inbox => "/",
        Folder::Junk => "/junk",
        Folder::Sent => "/sent",
    };
    let older = got.next.map(|c| {
        let q = serde_urlencoded::to_string([
            ("from", p.from.as_str()),
            ("subject", p.subject.as_str()),
            ("since", p.since.as_str()),
            ("until", p.until.as_str()),
            (
                "before",
                &format!("{}-{}", c.received_at.timestamp_millis(), c.id),
            ),
        ])
        .unwrap_or_default();
        format!("{base}?{q}")
    });
    page(
        StatusCode::OK,
        pages::list(&pages::ListPage {
            address: &account.address,
            csrf: &session.csrf,
            folder,
            search: &search,
            typed: (&p.from, &p.subject, &p.since, &p.until),
            messages: &got.messages,
            older,
        }),
    )
}

/// The user's record `id` and its bytes, or the response to give instead.
pub(super) async fn own_message(
    web: &Web,
    headers: &HeaderMap,
    id: &str,
) -> Result<(Account, Session, Record), Response> {
    let (account, session) = authed(web, headers).await?;
    let Ok(id) = id.parse::<MessageId>() else {
        return Err(not_found_page());
    };
    let view = View {
        account: &account,
        history_days: web.settings.history_days,
        now: web.clock.now(),
    };
    match view.message(web.storage.index.as_ref(), id).await {
        Ok(Some(r)) => Ok((account, session, r)),
        Ok(None) => Err(not_found_page()),
        Err(e) => Err(server_error(&e)),
    }
}

/// The bytes the user may see of `rec` ([`crate::mailbox::content`]), or the page to
/// answer instead.
pub(super) async fn bytes_of(web: &Web, rec: &Record) -> Result<Vec<u8>, Response> {
    match crate::mailbox::content(web.storage.blobs.as_ref(), rec).await {
        Ok(Some(b)) => Ok(b),
        Ok(None) => Err(not_found_page()),
        Err(e) => Err(server_error(&e)),
    }
}

#[derive(Deserialize, Default)]
pub(super) struct Images {
    #[serde(default)]
    images: Option<String>,
}

pub(super) async fn message(
    State(web): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<Images>,
) -> Response {
    let (account, session, rec) = match own_message(&web, &headers, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let bytes = match bytes_of(&web, &rec).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let shown = match tokio::task::spawn_blocking(move || render::show(&bytes)).await {
        Ok(s) => s,
        Err(e) => return server_error(&e),
    };
    page(
        StatusCode::OK,
        pages::message(&pages::MessagePage {
            address: &account.address,
            csrf: &session.csrf,
            record: &rec,
            shown: &shown,
            images: q.images.is_some(),
        }),
    )
}

pub(super) async fn body(
    State(web): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<Images>,
) -> Response {
    let (_, _, rec) = match own_message(&web, &headers, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let bytes = match bytes_of(&web, &rec).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let images = q.images.is_some();
    let doc = tokio::task::spawn_blocking(move || render::html_document(&bytes, images)).await;
    let Ok(Some(doc)) = doc else {
        return not_found_page();
    };
    let csp = HeaderValue::from_str(&render::body_csp(images))
        .unwrap_or_else(|_| HeaderValue::from_static("sandbox; default-src 'none'"));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_SECURITY_POLICY, csp),
            (
                header::X_FRAME_OPTIONS,
                HeaderValue::from_static("SAMEORIGIN"),
            ),
        ],
        doc,
    )
        .into_response()
}

/// `Content-Disposition: attachment` with an ASCII fallback name and the UTF-8 one
/// (RFC 6266, RFC 8187).
fn disposition(name: &str) -> HeaderValue {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// A content type safe to send as it is (`type/subtype` of token characters), else
/// `application/octet-stream`.
fn safe_type(ct: &str) -> HeaderValue {
    let ok = ct.split_once('/').is_some_and(|(t, s)| {
        let token = |x: &str| {
            !x.is_empty()
                && x.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
        };
        token(t) && token(s)
    });
    let lower = ct.to_ascii_lowercase();
    // Never something a browser would render inline as a page of ours.
    let active = [
        "text/html",
        "application/xhtml",
        "image/svg",
        "text/xml",
        "application/xml",
    ]
    .iter()
    .any(|p| lower.starts_with(p))
        // Nor a script a page could load (`text/javascript`, `application/ecmascript`...).
        || lower.contains("script");
    if ok && !active {
        HeaderValue::from_str(&lower)
            .unwrap_or(HeaderValue::from_static("application/octet-stream"))
    } else {
        HeaderValue::from_static("application/octet-stream")
    }
}

pub(super) async fn attachment(
    State(web): Shared,
    headers: HeaderMap,
    Path((id, n)): Path<(String, String)>,
) -> Response {
    let (_, _, rec) = match own_message(&web, &headers, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Ok(n) = n.parse::<u32>() else {
        return not_found_page();
    };
    let bytes = match bytes_of(&web, &rec).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let found = tokio::task::spawn_blocking(move || render::attachment(&bytes, n)).await;
    let Ok(Some((name, ct, data))) = found else {
        return not_found_page();
    };
    (
        [
            (header::CONTENT_TYPE, safe_type(&ct)),
            (header::CONTENT_DISPOSITION, disposition(&name)),
        ],
        data,
    )
        .into_response()
}

pub(super) async fn raw(
    State(web): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (_, _, rec) = match own_message(&web, &headers, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let body = if crate::mailbox::shows_original(&rec) {
        match bytes_of(&web, &rec).await {
            Ok(b) => Body::from(b),
            Err(r) => return r,
        }
    } else {
        match web.storage.blobs.open(&rec.blob_key()).await {
            // Streamed: a message may be 40 MB.
            Ok(r) => Body::from_stream(tokio_util::io::ReaderStream::new(r)),
            Err(crate::error::StoreError::MissingBlob(_)) => return not_found_page(),
            Err(e) => return server_error(&e),
        }
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("message/rfc822"),
            ),
            (
                header::CONTENT_DISPOSITION,
                disposition(&format!("{}.eml", rec.id)),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_headers_are_safe() {
        assert_eq!(
            disposition("résumé \"x\".pdf"),
            "attachment; filename=\"r_sum_ _x_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22x%22.pdf"
        );
        assert_eq!(safe_type("application/PDF"), "application/pdf");
        assert_eq!(safe_type("text/html"), "application/octet-stream");
        assert_eq!(safe_type("image/svg+xml"), "application/octet-stream");
        assert_eq!(safe_type("text/javascript"), "application/octet-stream");
        assert_eq!(
            safe_type("Application/ECMAScript"),
            "application/octet-stream"
        );
        assert_eq!(safe_type("bad type/x\r\n"), "application/octet-stream");
        assert_eq!(
            cursor_of("1700000000000-01HZZZZZZZZZZZZZZZZZZZZZZZ")
                .map(|c| c.received_at.timestamp()),
            Some(1_700_000_000)
        );
        assert!(cursor_of("x-y").is_none());
    }
}
