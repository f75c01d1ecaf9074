//! Writing in the emergency inbox: the compose form (new, reply, reply all, forward) and
//! sending it. The message is built by [`crate::outbound::compose`] and stored by
//! [`crate::outbound::Sending::submit`], exactly as the submission listener's: the same
//! checks on who it is from, the same parts (colleagues' copy held, outside recipients'
//! queued, the sender's own copy for their mailbox), the same hourly count.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Multipart, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::handlers::{
    authed, bytes_of, forbidden, not_found_page, own_message, page, server_error,
};
use super::{ClientIp, Web, pages};
use crate::error::StoreError;
use crate::model::Origin;
use crate::outbound::Submitted;
use crate::outbound::compose::{Attachment, Draft, Mode, Original, Prefill, address_list, prefill};
use crate::submission::identity;
use crate::users::Account;

type Shared = State<Arc<Web>>;

#[derive(Deserialize, Default)]
pub(super) struct ComposeParams {
    /// The message answered or forwarded.
    #[serde(default)]
    re: String,
    #[serde(default)]
    mode: String,
}

/// What the form shows.
#[derive(Default)]
struct Form {
    from: String,
    to: String,
    cc: String,
    bcc: String,
    subject: String,
    body: String,
    re: String,
    mode: String,
    csrf: String,
    attachments: Vec<Attachment>,
    /// Attachments the browser uploaded to the store itself ([`Web::uploads`]).
    uploaded: Vec<Uploaded>,
    /// Files came in the form (a form shown again cannot keep them).
    had_files: bool,
}

/// One attachment uploaded by the browser: the `upload` field's JSON.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
struct Uploaded {
    /// A ULID the app chose ([`upload`]); the key is made from it and the user.
    id: String,
    name: String,
    #[serde(rename = "type")]
    content_type: String,
}

/// How long a presigned upload URL lives.
const UPLOAD_URL_LIFE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// The store key of `user`'s upload `id`: under a hash of the user, so one user can
/// never name another's upload (the id alone is not a secret: it is in the page).
fn upload_key(user: &str, id: ulid::Ulid) -> String {
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(user.to_lowercase().as_bytes()));
    format!("uploads/{}/{id}", &hash[..32])
}

fn not_set_up() -> Response {
    page(
        StatusCode::NOT_FOUND,
        pages::error(
            "Sending is not set up",
            "This emergency inbox can show your mail but not send any.",
        ),
    )
}

/// The original of a reply or forward, when `re` names one of the user's messages.
async fn original(web: &Web, headers: &HeaderMap, re: &str) -> Result<Option<Original>, Response> {
    if re.is_empty() {
        return Ok(None);
    }
    let (_, _, rec) = own_message(web, headers, re).await?;
    let bytes = bytes_of(web, &rec).await?;
    Ok(Some(
        tokio::task::spawn_blocking(move || Original::read(bytes))
            .await
            .map_err(|e| server_error(&e))?,
    ))
}

fn show(web: &Web, account: &Account, csrf: &str, f: &Form, error: Option<&str>) -> Response {
    let from = account.addresses();
    let uploaded: Vec<(String, String)> = f
        .uploaded
        .iter()
        .map(|u| (serde_json::to_string(u).unwrap_or_default(), u.name.clone()))
        .collect();
    let re = (!f.re.is_empty()).then(|| {
        (
            f.re.clone(),
            Mode::parse(&f.mode).map_or("reply", Mode::as_str),
        )
    });
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let mut response = page(
        status,
        pages::compose(&pages::ComposePage {
            address: &account.address,
            csrf,
            from: &from,
            chosen_from: if f.from.is_empty() {
                &account.address
            } else {
                &f.from
            },
            to: &f.to,
            cc: &f.cc,
            bcc: &f.bcc,
            subject: &f.subject,
            body: &f.body,
            re,
            error,
            internal_only: !web.sending.as_ref().is_some_and(|s| s.outside()),
            uploads: web.uploads.is_some(),
            uploaded: &uploaded,
            attachments_dropped: error.is_some() && f.had_files,
        }),
    );
    // Only this page runs a script (ours, `/static/compose.js`), and it may send files
    // to the store's origin and nowhere else.
    if let Some(up) = &web.uploads
        && let Ok(csp) = axum::http::HeaderValue::from_str(&format!(
            "{}; script-src 'self'; connect-src 'self' {}",
            super::PAGE_CSP,
            up.origin()
        ))
    {
        response
            .headers_mut()
            .insert(axum::http::header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

pub(super) async fn form(
    State(web): Shared,
    headers: HeaderMap,
    Query(q): Query<ComposeParams>,
) -> Response {
    let (account, session) = match authed(&web, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    if web.sending.is_none() {
        return not_set_up();
    }
    let mode = Mode::parse(&q.mode).unwrap_or(Mode::Reply);
    let filled = match original(&web, &headers, &q.re).await {
        Ok(Some(orig)) => prefill(&orig, mode, &identity(&account)),
        Ok(None) => Prefill::default(),
        Err(r) => return r,
    };
    let f = Form {
        to: filled.to,
        cc: filled.cc,
        subject: filled.subject,
        body: filled.body,
        re: q.re.clone(),
        mode: mode.as_str().into(),
        ..Form::default()
    };
    show(&web, &account, &session.csrf, &f, None)
}

/// A file name as the browser sent it, without a path or control characters.
fn file_name(typed: &str) -> String {
    let base = typed.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = base.chars().filter(|c| !c.is_control()).take(200).collect();
    if clean.trim().is_empty() {
        "attachment".into()
    } else {
        clean
    }
}

/// Remove uploaded attachments (what cannot be removed now expires with the bucket's
/// lifecycle rule).
async fn remove_uploads(web: &Web, keys: &[String]) {
    if let Some(store) = &web.uploads {
        for key in keys {
            if let Err(e) = store.remove(key).await {
                tracing::warn!(error = %e, "could not remove an uploaded attachment");
            }
        }
    }
}

/// A content type as the browser sent it, or `application/octet-stream`.
fn content_type(typed: Option<&str>) -> String {
    typed
        .filter(|c| {
            c.contains('/')
                && c.len() <= 200
                && c.chars().all(|ch| ch.is_ascii_graphic() || ch == ' ')
        })
        .unwrap_or("application/octet-stream")
        .to_string()
}

/// Read the multipart form; `Err` when it is not one (or too big).
async fn read_form(mut mp: Multipart) -> Result<Form, String> {
    let mut f = Form::default();
    while let Some(field) = mp.next_field().await.map_err(|e| e.body_text())? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "attachment" {
            let typed = field.file_name().unwrap_or_default().to_string();
            let content_type = content_type(field.content_type());
            let bytes = field.bytes().await.map_err(|e| e.body_text())?;
            if typed.is_empty() && bytes.is_empty() {
                continue; // the file input left empty
            }
            f.attachments.push(Attachment {
                name: file_name(&typed),
                content_type,
                bytes: bytes.to_vec(),
            });
            continue;
        }
        let text = field.text().await.map_err(|e| e.body_text())?;
        match name.as_str() {
            "upload" => f.uploaded.push(
                serde_json::from_str(&text)
                    .map_err(|_| "an attachment's upload field is not valid")?,
            ),
            "from" => f.from = text,
            "to" => f.to = text,
            "cc" => f.cc = text,
            "bcc" => f.bcc = text,
            "subject" => f.subject = text.replace(['\r', '\n'], " "),
            "body" => f.body = text,
            "re" => f.re = text,
            "mode" => f.mode = text,
            "csrf" => f.csrf = text,
            _ => {}
        }
    }
    Ok(f)
}

pub(super) async fn send(
    State(web): Shared,
    ip: Option<Extension<ClientIp>>,
    headers: HeaderMap,
    mp: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let (account, session) = match authed(&web, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(sending) = web.sending.clone() else {
        return not_set_up();
    };
    let Ok(mp) = mp else {
        return forbidden();
    };
    let mut f = match read_form(mp).await {
        Ok(f) => f,
        Err(why) => {
            return page(
                StatusCode::PAYLOAD_TOO_LARGE,
                pages::error("Not sent", &format!("The message could not be read: {why}")),
            );
        }
    };
    if !session.csrf_ok(&f.csrf) {
        return forbidden();
    }
    f.had_files = !f.attachments.is_empty();
    let user = identity(&account);
    let lists = (
        address_list(&f.to),
        address_list(&f.cc),
        address_list(&f.bcc),
    );
    let (to, cc, bcc) = match lists {
        (Ok(to), Ok(cc), Ok(bcc)) => (to, cc, bcc),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return show(&web, &account, &session.csrf, &f, Some(&e.to_string()));
        }
    };
    let answers = match Mode::parse(&f.mode) {
        Some(mode) if !f.re.is_empty() => match original(&web, &headers, &f.re).await {
            Ok(Some(o)) => Some((mode, o)),
            Ok(None) => None,
            Err(_) => return not_found_page(),
        },
        _ => None,
    };
    let mut attachments = std::mem::take(&mut f.attachments);
    let mut upload_keys = Vec::new();
    if !f.uploaded.is_empty() {
        let Some(store) = web.uploads.clone() else {
            return forbidden();
        };
        let mut room = web.settings.max_message_size;
        for u in &f.uploaded {
            let Ok(id) = u.id.parse() else {
                return forbidden();
            };
            let key = upload_key(&account.address, id);
            match store.read(&key, room as u64).await {
                Ok(Some(bytes)) => {
                    room = room.saturating_sub(bytes.len());
                    attachments.push(Attachment {
                        name: file_name(&u.name),
                        content_type: content_type(Some(&u.content_type)),
                        bytes,
                    });
                    upload_keys.push(key);
                }
                Ok(None) => {
                    f.uploaded.clear();
                    return show(
                        &web,
                        &account,
                        &session.csrf,
                        &f,
                        Some(
                            "An attachment did not arrive, or the message is too large with it: please choose your attachments again.",
                        ),
                    );
                }
                Err(e) => return server_error(&e),
            }
        }
    }
    let draft = Draft {
        from: if f.from.is_empty() {
            account.address.clone()
        } else {
            f.from.to_lowercase()
        },
        to,
        cc,
        bcc,
        subject: f.subject.clone(),
        body: f.body.clone(),
        attachments,
        answers,
    };
    if let Err(e) = draft.check(&user, web.settings.max_recipients) {
        return show(&web, &account, &session.csrf, &f, Some(&e.to_string()));
    }
    let now = web.clock.now();
    let bytes = match draft.build(now) {
        Ok(b) => b,
        Err(e) => return server_error(&e),
    };
    if bytes.len() > web.settings.max_message_size {
        // Encoded, the attachments take a third more: the user chooses fewer or smaller
        // ones, so those uploaded are of no more use.
        remove_uploads(&web, &upload_keys).await;
        f.uploaded.clear();
        return show(
            &web,
            &account,
            &session.csrf,
            &f,
            Some("The message is too large: please choose fewer or smaller attachments."),
        );
    }
    let allowed = match sending.may_send(&user.address).await {
        Ok(a) => a,
        Err(e) => return server_error(&e),
    };
    if !allowed {
        return show(
            &web,
            &account,
            &session.csrf,
            &f,
            Some("You have sent as many messages as an hour allows; try again later."),
        );
    }
    let ip = ip.map_or_else(String::new, |Extension(ClientIp(a))| a.to_string());
    let origin = Origin {
        ip,
        helo: "emergency-inbox".into(),
        tls: web.settings.secure,
        user: Some(user.address.clone()),
    };
    let rcpts = draft.recipients();
    let from = draft.from;
    drop(draft.attachments); // in `bytes` now
    // Stored in a task of its own: a browser that goes away (or the request's timeout)
    // cancels the request, never a message half stored.
    let task = tokio::spawn(async move {
        sending
            .submit(Submitted {
                user: &user,
                mail_from: &from,
                rcpts: &rcpts,
                message: &bytes,
                origin,
                via: "web",
            })
            .await
            .map(|_| ())
    });
    let sent = match task.await {
        Ok(r) => r,
        Err(e) => return server_error(&e),
    };
    match sent {
        Ok(_) => {
            // In the stored message now.
            remove_uploads(&web, &upload_keys).await;
            Redirect::to("/sent").into_response()
        }
        Err(StoreError::Refused(reply)) => {
            let text = reply.trim_end().to_string();
            show(
                &web,
                &account,
                &session.csrf,
                &f,
                Some(&format!("Not sent: {text}")),
            )
        }
        Err(e) => server_error(&e),
    }
}

#[derive(Deserialize)]
pub(super) struct UploadAsk {
    csrf: String,
    size: u64,
}

/// `POST /compose/upload`: a URL the browser may PUT one attachment of `size` bytes to,
/// and its id for the form (JSON `{"url": ..., "id": ...}`).
pub(super) async fn upload(
    State(web): Shared,
    headers: HeaderMap,
    form: Result<axum::Form<UploadAsk>, axum::extract::rejection::FormRejection>,
) -> Response {
    let (account, session) = match authed(&web, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (Some(_), Some(store)) = (&web.sending, &web.uploads) else {
        return not_set_up();
    };
    let Ok(axum::Form(ask)) = form else {
        return forbidden();
    };
    if !session.csrf_ok(&ask.csrf) {
        return forbidden();
    }
    // Base64 in the message: a file takes a third more than its size.
    if ask.size.saturating_mul(4) / 3 > web.settings.max_message_size as u64 {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            "the file is larger than a message may be",
        )
            .into_response();
    }
    let id = ulid::Ulid::new();
    let key = upload_key(&account.address, id);
    match store.presign_put(&key, ask.size, UPLOAD_URL_LIFE).await {
        Ok(url) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "url": url, "id": id.to_string() }).to_string(),
        )
            .into_response(),
        Err(e) => server_error(&e),
    }
}
