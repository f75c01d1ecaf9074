//! `SmtpOutbound`: the [`Outbound`] adapter for the `relay` mode of sending: every
//! message to the smarthost of `[outbound] relay` (STARTTLS, AUTH), one transaction per
//! message with all its outside recipients, through the same client that talks to the
//! primary ([`SmtpRelay`], with its defences against a hostile peer).
//!
//! The smarthost's replies become one reply per recipient: a refused MAIL is every
//! recipient's reply, an accepted RCPT takes the reply to the final dot. Anything that
//! breaks the session (no connection, a timeout, no reply after the dot) is a 4xx for
//! every recipient: the message is tried again, never failed, for trouble that is not
//! its own.

use async_trait::async_trait;

use super::client::SmtpRelay;
use crate::ports::{Outbound, Relay, Reply, Transaction};

/// Sends through one smarthost.
pub struct SmtpOutbound {
    relay: SmtpRelay,
}

impl SmtpOutbound {
    pub fn relay(relay: SmtpRelay) -> Self {
        SmtpOutbound { relay }
    }

    pub fn address(&self) -> &str {
        self.relay.address()
    }
}

/// One reply per recipient from a transaction's replies.
pub fn per_recipient(tx: &Transaction, n: usize) -> Vec<Reply> {
    if !tx.mail.is_positive() {
        return vec![tx.mail.clone(); n];
    }
    (0..n)
        .map(|i| match tx.rcpts.get(i) {
            Some(r) if matches!(r.code, 250 | 251) => match &tx.data {
                _ if tx.ambiguous => Reply::new(
                    451,
                    "4.4.2 no reply to the end of data (the relay may have the message)",
                ),
                Some(d) if d.code == 250 || !d.is_positive() => d.clone(),
                Some(d) => Reply::new(
                    451,
                    format!("4.5.0 unexpected reply to the end of data: {d}"),
                ),
                None => Reply::new(451, "4.5.0 no reply to DATA"),
            },
            Some(r) if r.is_positive() => {
                Reply::new(451, format!("4.5.0 unexpected reply to RCPT: {r}"))
            }
            Some(r) => r.clone(),
            None => Reply::new(451, "4.5.0 no reply to RCPT"),
        })
        .collect()
}

#[async_trait]
impl Outbound for SmtpOutbound {
    async fn send(&self, mail_from: &str, rcpts: &[String], message: &[u8]) -> Vec<Reply> {
        let trouble = |e: &dyn std::fmt::Display| {
            vec![Reply::new(451, format!("4.4.1 relay {}: {e}", self.relay.address())); rcpts.len()]
        };
        let mut session = match self.relay.connect().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(relay = self.relay.address(), error = %e, "outbound: cannot open a session with the relay");
                return trouble(&e);
            }
        };
        let body: crate::ports::BlobReader = Box::new(std::io::Cursor::new(message.to_vec()));
        let result = session.send(mail_from, rcpts, body).await;
        session.quit().await;
        match result {
            Ok(tx) => per_recipient(&tx, rcpts.len()),
            Err(e) => {
                tracing::warn!(relay = self.relay.address(), error = %e, "outbound: transaction with the relay failed");
                trouble(&e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(mail: u16, rcpts: &[u16], data: Option<u16>, ambiguous: bool) -> Transaction {
        Transaction {
            mail: Reply::new(mail, "x"),
            rcpts: rcpts.iter().map(|c| Reply::new(*c, "r")).collect(),
            data: data.map(|c| Reply::new(c, "d")),
            ambiguous,
        }
    }

    #[test]
    fn replies_per_recipient() {
        let codes = |v: Vec<Reply>| v.iter().map(|r| r.code).collect::<Vec<_>>();
        assert_eq!(
            codes(per_recipient(&tx(550, &[], None, false), 2)),
            [550, 550]
        );
        assert_eq!(
            codes(per_recipient(
                &tx(250, &[250, 550, 450], Some(250), false),
                3
            )),
            [250, 550, 450]
        );
        assert_eq!(
            codes(per_recipient(&tx(250, &[250, 251], Some(554), false), 2)),
            [554, 554]
        );
        assert_eq!(
            codes(per_recipient(&tx(250, &[250], Some(250), true), 1)),
            [451]
        );
        assert_eq!(
            codes(per_recipient(&tx(250, &[252], Some(250), false), 1)),
            [451]
        );
        assert_eq!(
            codes(per_recipient(&tx(250, &[250], Some(221), false), 1)),
            [451]
        );
        assert_eq!(
            codes(per_recipient(&tx(250, &[550], None, false), 2)),
            [550, 451]
        );
    }
}
