//! SPF lookups, with `mail-auth` (Stalwart's implementation of RFC 7208).
//!
//! The standby checks SPF only to decide, later, whether a bounce may go to the sender
//! (the lookup runs after the message was accepted, from the client IP, HELO and MAIL
//! FROM stored with it: see `crate::sender`, which also bounds its time);
//! it never refuses mail on SPF (the primary's own filters judge the message once it is
//! delivered, and a standby that refuses what the primary would accept loses mail).

use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfResult};

use crate::ports::SenderCheck;

/// The [`SenderCheck`] adapter over DNS.
pub struct SpfCheck {
    auth: MessageAuthenticator,
    /// Our host name, for the `%{r}` macro.
    host: String,
}

impl SpfCheck {
    /// Look up through `nameserver`, or the system's resolvers.
    ///
    /// # Errors
    /// The resolver configuration cannot be read.
    pub fn new(nameserver: Option<SocketAddr>, host: impl Into<String>) -> Result<Self, String> {
        Ok(SpfCheck {
            auth: MessageAuthenticator(crate::dns::resolver(nameserver, true)?),
            host: host.into(),
        })
    }
}

/// SES's spelling of an SPF result.
fn verdict(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "PASS",
        SpfResult::Fail => "FAIL",
        SpfResult::SoftFail => "SOFTFAIL",
        SpfResult::Neutral => "NEUTRAL",
        SpfResult::TempError => "TEMPERROR",
        SpfResult::PermError => "PERMERROR",
        SpfResult::None => "NONE",
    }
}

#[async_trait]
impl SenderCheck for SpfCheck {
    async fn spf(&self, ip: IpAddr, helo: &str, mail_from: &str) -> String {
        let params = SpfParameters::verify_mail_from(ip, helo, &self.host, mail_from);
        verdict(self.auth.verify_spf(params).await.result()).to_string()
    }
}
