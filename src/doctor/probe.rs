//! Does the primary take mail the standby hands back? The one check that sends a real
//! message, so it runs only when `[doctor] test_sender` and `test_recipient` are set.
//!
//! On the day, the primary sees the standby as the client of every message: its SPF
//! check of the original sender fails from the standby's address unless the primary
//! exempts the standby (`standby primary-config`). So the probe is sent as the drain
//! sends (the same session: STARTTLS, AUTH as configured) from `test_sender`, an address
//! whose domain's SPF does not allow the standby, to `test_recipient`; only a 250 after
//! the final dot passes.

use tokio::io::AsyncRead;

use super::Check;
use crate::config::Config;
use crate::ports::{Relay, Reply};

/// The probe's check; `None` when it is not configured.
pub async fn run(config: &Config) -> Option<Check> {
    let d = &config.doctor;
    let (from, to) = match (&d.test_sender, &d.test_recipient) {
        (Some(f), Some(t)) => (f.clone(), t.clone()),
        (None, None) => return None,
        _ => {
            return Some(Check::fail(
                "primary probe",
                "only one of [doctor] test_sender and test_recipient is set",
                "set both (the probe sends one real message) or neither",
            ));
        }
    };
    let name = "primary probe";
    let relay = match crate::lambda::operator_relay(config).await {
        Ok(r) => r,
        Err(e) => {
            return Some(Check::fail(
                name,
                e.to_string(),
                "fix [primary] in the config",
            ));
        }
    };
    let fix = "the primary refuses mail the standby hands back: exempt the standby's addresses \
               from SPF, greylisting and rate limits with the settings `standby primary-config \
               --postfix|--rspamd|--exchange|--mailcow` prints";
    let mut session = match relay.connect().await {
        Ok(s) => s,
        Err(e) => {
            return Some(Check::fail(
                name,
                format!("{}: {e}", config.primary_addr()),
                "see the primary login check",
            ));
        }
    };
    let message = message(&config.hostname, &from, &to);
    let body: Box<dyn AsyncRead + Send + Unpin> = Box::new(std::io::Cursor::new(message));
    let result = session.send(&from, std::slice::from_ref(&to), body).await;
    session.quit().await;
    Some(match result {
        Err(e) => Check::fail(name, format!("{from} -> {to}: {e}"), fix),
        Ok(tx) => {
            let refusal = |r: &Reply| format!("{} {}", r.code, r.text.trim());
            if !tx.mail.is_positive() {
                Check::fail(
                    name,
                    format!("MAIL FROM:<{from}> refused: {}", refusal(&tx.mail)),
                    fix,
                )
            } else if let Some(r) = tx.rcpts.iter().find(|r| !r.is_positive()) {
                Check::fail(name, format!("RCPT TO:<{to}> refused: {}", refusal(r)), fix)
            } else {
                match &tx.data {
                    Some(r) if r.code == 250 => Check::pass(
                        name,
                        format!(
                            "{from} -> {to} accepted: {}; sent from this host{}",
                            r.text.trim(),
                            if config.backend == crate::config::BackendKind::Aws {
                                " (the drain function sends from Lambda's addresses: only \
                                 the submission route with AUTH is the same for both)"
                            } else {
                                ""
                            }
                        ),
                    ),
                    Some(r) => Check::fail(
                        name,
                        format!("{from} -> {to} not accepted: {}", refusal(r)),
                        fix,
                    ),
                    None => Check::fail(name, format!("{from} -> {to}: no DATA"), fix),
                }
            }
        }
    })
}

/// The probe message: plain text saying what it is.
fn message(hostname: &str, from: &str, to: &str) -> Vec<u8> {
    let now = chrono::Utc::now();
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: standby-mx doctor probe\r\n\
         Date: {}\r\nMessage-ID: <doctor-{}@{hostname}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n\
         A test message from `standby doctor` on {hostname}: the primary accepted mail\r\n\
         handed back by the standby from a sender whose SPF does not allow it.\r\n",
        now.to_rfc2822(),
        now.timestamp_millis()
    )
    .into_bytes()
}
