//! A stored message as the inbox shows it: headers, the text part, the HTML part made
//! safe, the attachments.
//!
//! HTML mail is hostile by default (scripts, event handlers, `javascript:` links, remote
//! images that tell the sender the mail was read). Three layers keep it inert:
//! - `ammonia` rewrites it to a whitelist of tags and attributes: no script, style
//!   element, SVG, form, frame or event handler survives, only `http`, `https`, `mailto`
//!   and the like as link schemes, no relative URLs; remote images lose their `src`
//!   unless the user allowed images for this message;
//! - it is served as its own document with `Content-Security-Policy: sandbox` (no
//!   scripts, an opaque origin) and `default-src 'none'` (images only from `data:`, or
//!   any HTTP(S) source once allowed), so whatever the sanitiser missed loads nothing;
//! - the page shows it in an `<iframe sandbox>` without `allow-scripts` or
//!   `allow-same-origin`.

use mail_parser::{MessageParser, MimeHeaders, PartType};

/// What the message page shows of a message.
#[derive(Debug, Clone, Default)]
pub struct Shown {
    pub subject: String,
    pub from: String,
    pub to: String,
    pub cc: String,
    pub date: String,
    /// The plain-text body (converted from the HTML one when there is no text part).
    pub text: Option<String>,
    /// Whether there is an HTML body to show in the frame.
    pub html: bool,
    /// Whether the HTML body refers to remote images.
    pub remote_images: bool,
    pub attachments: Vec<Attachment>,
}

/// One attachment, by its position among the message's attachments.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub index: u32,
    pub name: String,
    pub content_type: String,
    pub size: usize,
}

fn addresses(a: Option<&mail_parser::Address<'_>>) -> String {
    let Some(a) = a else {
        return String::new();
    };
    a.iter()
        .map(|x| match (x.name(), x.address()) {
            (Some(n), Some(addr)) => format!("{n} <{addr}>"),
            (None, Some(addr)) => addr.to_string(),
            (Some(n), None) => n.to_string(),
            (None, None) => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The name an attachment is offered under: its own (path and control characters
/// removed), else `attachment-N`.
fn attachment_name(part: &mail_parser::MessagePart<'_>, index: u32) -> String {
    let clean: String = part
        .attachment_name()
        .unwrap_or("")
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("")
        .chars()
        // Control characters, and the bidirectional and zero-width format characters
        // that make `invoice<U+202E>gpj.exe` read as `invoiceexe.jpg`.
        .filter(|c| !c.is_control() && !is_format(*c))
        .collect::<String>()
        .trim()
        .trim_start_matches('.')
        .to_string();
    if clean.is_empty() {
        format!("attachment-{}", index + 1)
    } else {
        clean
    }
}

/// Unicode format characters (category Cf) a file name can hide its extension with.
fn is_format(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{feff}'
            | '\u{061c}'
            | '\u{180e}'
            | '\u{fff9}'..='\u{fffb}'
    )
}

fn content_type(part: &mail_parser::MessagePart<'_>) -> String {
    part.content_type().map_or_else(
        || "application/octet-stream".to_string(),
        |ct| match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub),
            None => ct.ctype().to_string(),
        },
    )
}

/// The first real HTML body (not a text part mail-parser would convert).
fn html_body<'a>(msg: &'a mail_parser::Message<'a>) -> Option<&'a str> {
    msg.html_bodies().find_map(|p| match &p.body {
        PartType::Html(h) => Some(h.as_ref()),
        _ => None,
    })
}

/// Parse `bytes` for the message page.
pub fn show(bytes: &[u8]) -> Shown {
    let Some(msg) = MessageParser::default().parse(bytes) else {
        return Shown {
            text: Some(String::from_utf8_lossy(bytes).into_owned()),
            ..Shown::default()
        };
    };
    let html = html_body(&msg);
    let attachments = msg
        .attachments()
        .enumerate()
        .map(|(i, p)| {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            Attachment {
                index,
                name: attachment_name(p, index),
                content_type: content_type(p),
                size: p.contents().len(),
            }
        })
        .collect();
    Shown {
        subject: msg.subject().unwrap_or("").to_string(),
        from: addresses(msg.from()),
        to: addresses(msg.to()),
        cc: addresses(msg.cc()),
        date: msg.date().map(|d| d.to_rfc822()).unwrap_or_default(),
        text: msg.body_text(0).map(|t| t.into_owned()),
        html: html.is_some(),
        remote_images: html.is_some_and(has_remote_images),
        attachments,
    }
}

fn is_remote(url: &str) -> bool {
    let u = url.trim_start().to_ascii_lowercase();
    u.starts_with("http:") || u.starts_with("https:") || u.starts_with("//")
}

fn has_remote_images(html: &str) -> bool {
    let found = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    sanitizer(false, Some(found.clone())).clean(html);
    found.load(std::sync::atomic::Ordering::Relaxed)
}

fn sanitizer(
    images: bool,
    found: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> ammonia::Builder<'static> {
    let mut b = ammonia::Builder::default();
    b.url_relative(ammonia::UrlRelative::Deny)
        // Links that open a web page or write a mail; nothing that starts an app.
        .url_schemes(["http", "https", "mailto"].into_iter().collect())
        .add_generic_attributes(["style"])
        .set_tag_attribute_value("a", "target", "_blank")
        .link_rel(Some("noopener noreferrer"))
        .attribute_filter(move |element, attribute, value| {
            if element == "img" && attribute == "src" && is_remote(value) {
                if let Some(f) = &found {
                    f.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                return images.then(|| value.into());
            }
            Some(value.into())
        });
    b
}

/// The HTML body as a document of its own, sanitised (see the module docs); remote
/// images only when `images`. `None` when there is no HTML body.
pub fn html_document(bytes: &[u8], images: bool) -> Option<String> {
    let msg = MessageParser::default().parse(bytes)?;
    let clean = sanitizer(images, None).clean(html_body(&msg)?).to_string();
    Some(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta name=\"referrer\" content=\"no-referrer\"></head><body>{clean}</body></html>"
    ))
}

/// Attachment `index`: its name, content type and decoded bytes.
pub fn attachment(bytes: &[u8], index: u32) -> Option<(String, String, Vec<u8>)> {
    let msg = MessageParser::default().parse(bytes)?;
    let part = msg.attachment(index)?;
    Some((
        attachment_name(part, index),
        content_type(part),
        part.contents().to_vec(),
    ))
}

/// The Content-Security-Policy of the HTML body's document.
pub fn body_csp(images: bool) -> String {
    let img = if images {
        "data: https: http:"
    } else {
        "data:"
    };
    format!(
        "sandbox allow-popups allow-popups-to-escape-sandbox; default-src 'none'; \
         img-src {img}; style-src 'unsafe-inline'; font-src data:; \
         frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "From: Mallory <m@evil.test>\r\nTo: alice@example.test\r\n\
        Subject: hi\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
        <p onclick=\"x()\">Hi<script>window.pwned=1</script></p>\
        <img src=\"http://canary.test/pixel.gif\" onerror=\"window.pwned=2\">\
        <a href=\"javascript:window.pwned=3\">click</a>\
        <svg><script>window.pwned=4</script></svg>\
        <div style=\"width: expression(alert(1))\">css</div>\
        <iframe src=\"http://canary.test/\"></iframe><form action=\"http://canary.test/\"></form>";

    #[test]
    fn hostile_html_is_inert_and_remote_images_wait() {
        let shown = show(HOSTILE.as_bytes());
        assert!(shown.html && shown.remote_images);
        assert_eq!(shown.from, "Mallory <m@evil.test>");
        let doc = html_document(HOSTILE.as_bytes(), false).unwrap();
        for bad in [
            "<script",
            "onclick",
            "onerror",
            "javascript:",
            "<svg",
            "<iframe",
            "<form",
            "canary.test",
        ] {
            assert!(!doc.contains(bad), "{bad} in {doc}");
        }
        assert!(doc.contains("Hi") && doc.contains("click"));
        let doc = html_document(HOSTILE.as_bytes(), true).unwrap();
        assert!(
            doc.contains("src=\"http://canary.test/pixel.gif\""),
            "{doc}"
        );
        assert!(!doc.contains("onerror") && !doc.contains("<iframe"));
        assert!(body_csp(false).contains("img-src data:;"));
    }

    #[test]
    fn attachments_keep_their_bytes_and_lose_their_paths() {
        let msg = "From: a@example.org\r\nSubject: files\r\nMIME-Version: 1.0\r\n\
            Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
            Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n\
            Content-Type: application/pdf; name=\"../../etc/x.pdf\"\r\n\
            Content-Disposition: attachment; filename=\"../../etc/x.pdf\"\r\n\
            Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n";
        let shown = show(msg.as_bytes());
        assert_eq!(shown.text.as_deref().map(str::trim), Some("see attached"));
        assert_eq!(shown.attachments.len(), 1);
        assert_eq!(shown.attachments[0].name, "x.pdf");
        let (name, ct, bytes) = attachment(msg.as_bytes(), 0).unwrap();
        assert_eq!((name.as_str(), ct.as_str()), ("x.pdf", "application/pdf"));
        assert_eq!(bytes, b"%PDF-1.4\n");
        assert!(attachment(msg.as_bytes(), 1).is_none());
        let hidden = msg.replace("../../etc/x.pdf", "invoice\u{202e}fdp.exe");
        assert_eq!(
            show(hidden.as_bytes()).attachments[0].name,
            "invoicefdp.exe"
        );
    }
}
