//! `standby doctor`: is this standby ready for the day the primary dies?
//!
//! A standby that was never tested fails when it is needed: an MX record that was never
//! added, an SES identity still pending, a receipt rule set that was never activated, a
//! primary that refuses the drain's login. Each check here looks at the real thing (DNS
//! through a resolver, the AWS APIs, an SMTP session with the primary) and says pass,
//! warn or fail, with the fix for anything that is not a pass. Checks are independent:
//! one failing does not hide the others.
//!
//! One file per area: [`dns`] (MX records), [`mta_sts`] (MTA-STS policies and TLS-RPT),
//! [`certificate`] (the public listener's STARTTLS and certificate, DANE), [`aws`] (SES
//! identity and receipt rules, bucket, table), [`local`] (the spool), [`lists`] (the
//! recipients and users files' age), [`primary`] (login and health state), [`probe`]
//! (a real message through the primary, opt-in), [`sending`] (SPF, DKIM and the
//! smarthost of what users send).

pub mod aws;
pub mod certificate;
pub mod dns;
pub mod lists;
pub mod local;
pub mod mta_sts;
pub mod primary;
pub mod probe;
pub mod sending;

use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

use crate::config::{BackendKind, Config};
use crate::ports::Storage;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked, e.g. `mx example.com`.
    pub name: String,
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do about it (warn and fail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            verdict: Verdict::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            verdict: Verdict::Warn,
            ..Check::fail(name, detail, fix)
        }
    }

    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            verdict: Verdict::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Every check, in order.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    fn new(checks: Vec<Check>) -> Report {
        Report {
            ok: checks.iter().all(|c| c.verdict != Verdict::Fail),
            checks,
        }
    }

    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.verdict == Verdict::Fail)
    }

    /// A table for people: one line per check, the fix indented below it.
    pub fn render(&self) -> String {
        let width = self
            .checks
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = format!("{:<width$}  {:<6}{}\n", "CHECK", "RESULT", "DETAIL");
        for c in &self.checks {
            out.push_str(&format!(
                "{:<width$}  {:<6}{}\n",
                c.name, c.verdict, c.detail
            ));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("{:<width$}  {:<6}fix: {fix}\n", "", ""));
            }
        }
        let (fails, warns) = self
            .checks
            .iter()
            .fold((0, 0), |(f, w), c| match c.verdict {
                Verdict::Fail => (f + 1, w),
                Verdict::Warn => (f, w + 1),
                Verdict::Pass => (f, w),
            });
        out.push_str(&format!(
            "{} checks: {} failed, {} warnings\n",
            self.checks.len(),
            fails,
            warns
        ));
        out
    }
}

/// Where to look.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// DNS server for the MX checks (`IP:port`); the system resolver when `None`.
    pub nameserver: Option<SocketAddr>,
    /// Where the standby's public SMTP listener is reached from here (`HOST:PORT`);
    /// default the MX host on port 25.
    pub connect: Option<String>,
    /// Port of the domains' MTA-STS policy servers (443; tests use another; 0 is 443).
    pub https_port: u16,
}

/// Run every check that applies to this configuration's backend.
pub async fn run(config: &Config, storage: Result<&Storage, &str>, opts: &Options) -> Report {
    let mut checks = Vec::new();
    let aws = match config.backend {
        BackendKind::Aws => aws::Context::new(config).await,
        BackendKind::Local => None,
    };
    let standby_mx = dns::standby_host(config, aws.as_ref().map(|a| a.region.as_str()));
    checks.extend(dns::check_domains(config, &standby_mx, opts.nameserver).await);
    let ca_pem = match &config.doctor.ca_file {
        Some(path) => match std::fs::read(path) {
            Ok(pem) => Some(pem),
            Err(e) => {
                checks.push(Check::fail(
                    "doctor ca_file",
                    format!("{}: {e}", path.display()),
                    "fix [doctor] ca_file (a PEM file of trusted CA certificates)",
                ));
                None
            }
        },
        None => None,
    };
    let resolver = crate::dns::resolver(opts.nameserver, false);
    match &resolver {
        Ok(resolver) => {
            let fetcher = mta_sts::Fetcher {
                port: if opts.https_port == 0 {
                    443
                } else {
                    opts.https_port
                },
                ca_pem,
            };
            checks.extend(mta_sts::checks(&config.domains, &standby_mx, resolver, &fetcher).await);
        }
        Err(e) => checks.push(Check::fail(
            "mta-sts",
            e.clone(),
            "fix /etc/resolv.conf or pass --nameserver IP:PORT",
        )),
    }
    match &aws {
        Some(ctx) => checks.extend(ctx.checks(config).await),
        None => {
            checks.push(local::spool(config, storage));
            let tls = crate::smtp::tls::ClientTls::new(true, config.doctor.ca_file.as_deref());
            match (tls, &resolver) {
                (Ok(tls), Ok(resolver)) => checks.extend(
                    certificate::checks(
                        opts.connect.as_deref(),
                        &standby_mx,
                        &tls,
                        resolver,
                        opts.nameserver,
                    )
                    .await,
                ),
                (Err(e), _) => checks.push(Check::fail(
                    format!("tls {standby_mx}"),
                    e.to_string(),
                    "fix [doctor] ca_file",
                )),
                (_, Err(_)) => {}
            }
        }
    }
    checks.extend(lists::checks(config, std::time::SystemTime::now()));
    checks.push(primary::login(config).await);
    checks.push(primary::health(config, storage).await);
    if let Some(check) = probe::run(config).await {
        checks.push(check);
    }
    if sending::applies(config) {
        checks.extend(sending::checks(config, opts.nameserver).await);
    }
    Report::new(checks)
}
