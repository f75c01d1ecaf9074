//! The AWS side: SES must know the domains (verified identity, DKIM), the *active*
//! receipt rule set must store every configured domain's mail in our bucket before it
//! invokes ingest, and the bucket and table must exist with the settings the code and the
//! template expect. Receipt rules live only in the classic SES API (v1).

use aws_sdk_ses::types::{ReceiptAction, ReceiptRule};

use super::Check;
use crate::backend::aws::schema::{self, GSI, GSI_PK, GSI_SK, TTL_ATTRIBUTE};
use crate::backend::aws::{AwsClients, AwsSettings};
use crate::config::Config;

/// Clients and names for the AWS checks.
pub struct Context {
    clients: AwsClients,
    ses: aws_sdk_ses::Client,
    settings: AwsSettings,
    pub region: String,
}

fn err(e: &impl std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s = format!("{s}: {inner}");
        src = inner.source();
    }
    s
}

impl Context {
    /// `None` when the config has no bucket/table (the storage check reports that).
    pub async fn new(config: &Config) -> Option<Context> {
        let settings = config.aws_settings()?;
        let clients = AwsClients::connect(&settings).await;
        let region = clients
            .sdk
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "us-east-1".into());
        let ses = aws_sdk_ses::Client::new(&clients.sdk);
        Some(Context {
            clients,
            ses,
            settings,
            region,
        })
    }

    pub async fn checks(&self, config: &Config) -> Vec<Check> {
        let mut out = Vec::new();
        for d in &config.domains {
            out.push(self.identity(d).await);
        }
        out.push(self.receipt_rules(config).await);
        out.push(self.bucket().await);
        out.push(self.table().await);
        if let Some(topic) = &config.metrics.alarm_topic {
            out.push(self.alarm_subscription(topic, &config.domains).await);
        }
        // On AWS SES is the way out (the template's EnableSending): whether it can send
        // is always worth knowing, and fails the doctor when this config sends through it.
        let sends = config.outbound_mode() == crate::config::OutboundMode::Ses
            && config.outbound.mode.is_some();
        out.push(self.ses_sending(sends).await);
        out
    }

    /// Whether SES will send what users write: an account still in the SES sandbox
    /// sends only to verified addresses (and 200 a day), so nearly every message to an
    /// outside recipient fails; one whose sending is paused sends nothing.
    async fn ses_sending(&self, sends: bool) -> Check {
        let name = "ses sending";
        // Not sending through SES here (no `[outbound] mode = "ses"`): worth a warning.
        let fail = |detail: String, fix: &str| {
            if sends {
                Check::fail(name, detail, fix)
            } else {
                Check::warn(
                    name,
                    format!(
                        "{detail} (matters once users send through SES: [outbound] mode = \"ses\", the template's EnableSending)"
                    ),
                    fix,
                )
            }
        };
        let account = match aws_sdk_sesv2::Client::new(&self.clients.sdk)
            .get_account()
            .send()
            .await
        {
            Ok(a) => a,
            Err(e) => {
                return fail(
                    err(&e),
                    "check the AWS credentials and region, and that they may ses:GetAccount",
                );
            }
        };
        let quota = account.send_quota().map_or(String::new(), |q| {
            format!(
                ", {} messages a day, {} a second",
                q.max24_hour_send(),
                q.max_send_rate()
            )
        });
        if !account.sending_enabled() {
            return fail(
                format!(
                    "sending is paused for this account in {} (enforcement status {})",
                    self.region,
                    account.enforcement_status().unwrap_or("unknown")
                ),
                "see the SES console's reputation dashboard: a pause AWS imposed is lifted by AWS \
                 once the cause is fixed (reply to its notice); one you set, by `aws sesv2 \
                 put-account-sending-attributes --sending-enabled`",
            );
        }
        if !account.production_access_enabled() {
            return fail(
                format!(
                    "the account is in the SES sandbox in {}: it sends only to verified addresses{quota}",
                    self.region
                ),
                "request production access (SES console, Account dashboard, or `aws sesv2 \
                 put-account-details --production-access-enabled ...`) before users need to send",
            );
        }
        // Sending, but under review for bounces or complaints: one more step to a pause.
        if account.enforcement_status() == Some("PROBATION") {
            return Check::warn(
                name,
                format!(
                    "on probation in {} (bounce or complaint rate){quota}",
                    self.region
                ),
                "see the SES console's reputation dashboard before the account is paused",
            );
        }
        Check::pass(name, format!("production access in {}{quota}", self.region))
    }

    /// The stack's alarms reach someone only through a confirmed subscription of its
    /// topic: SNS mails a confirmation link to `AlarmEmail`, and until someone follows it
    /// every alarm goes nowhere, on exactly the day it matters.
    async fn alarm_subscription(&self, topic: &str, own_domains: &[String]) -> Check {
        let name = "alarm subscription";
        let sns = aws_sdk_sns::Client::new(&self.clients.sdk);
        let (mut confirmed, mut pending) = (Vec::new(), Vec::new());
        let mut token = None;
        loop {
            let page = match sns
                .list_subscriptions_by_topic()
                .topic_arn(topic)
                .set_next_token(token)
                .send()
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    return Check::fail(
                        name,
                        format!("{topic}: {}", err(&e)),
                        "check `[metrics] alarm_topic` (the stack's AlarmTopic output) and that \
                         these credentials may sns:ListSubscriptionsByTopic",
                    );
                }
            };
            for sub in page.subscriptions() {
                let who = format!(
                    "{} {}",
                    sub.protocol().unwrap_or("?"),
                    sub.endpoint().unwrap_or("?")
                );
                // A pending one has "PendingConfirmation" where the ARN would be.
                if sub
                    .subscription_arn()
                    .is_some_and(|a| a.starts_with("arn:"))
                {
                    confirmed.push(who);
                } else {
                    pending.push(who);
                }
            }
            token = page.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        // An address in one of the standby's own domains gets its alarms through the
        // primary, the server whose outage they report.
        let ours = |who: &String| {
            who.rsplit_once('@')
                .is_some_and(|(_, d)| own_domains.iter().any(|o| o.eq_ignore_ascii_case(d.trim())))
        };
        match (confirmed.is_empty(), pending.is_empty()) {
            (false, _) if confirmed.iter().all(ours) => Check::warn(
                name,
                format!(
                    "alarms reach only {}, in a domain whose mail the primary handles: during \
                     an outage they wait in the standby",
                    confirmed.join(", ")
                ),
                "subscribe an address outside these domains as well (aws sns subscribe)",
            ),
            (false, _) => Check::pass(name, format!("alarms reach {}", confirmed.join(", "))),
            (true, false) => Check::fail(
                name,
                format!(
                    "no confirmed subscription: {} waiting for confirmation, so no alarm reaches anyone",
                    pending.join(", ")
                ),
                "follow the link in the mail AWS Notifications sent to that address (look in its \
                 spam folder; `aws sns subscribe` sends it again)",
            ),
            (true, true) => Check::fail(
                name,
                format!("{topic} has no subscription, so no alarm reaches anyone"),
                format!(
                    "subscribe an address that does not depend on the primary: scripts/deploy \
                     --alarm-email ADDRESS, or `aws sns subscribe --topic-arn {topic} --protocol \
                     email --notification-endpoint ADDRESS`, then confirm it"
                ),
            ),
        }
    }

    async fn identity(&self, domain: &str) -> Check {
        let name = format!("ses identity {domain}");
        let verify = format!(
            "verify the domain in SES in {} (scripts/deploy does; or `aws ses verify-domain-dkim \
             --domain {domain}`) and publish the records it prints",
            self.region
        );
        let v = match self
            .ses
            .get_identity_verification_attributes()
            .identities(domain)
            .send()
            .await
        {
            Ok(v) => v,
            Err(e) => return Check::fail(name, err(&e), "check the AWS credentials and region"),
        };
        let Some(attrs) = v.verification_attributes().get(domain) else {
            return Check::fail(
                name,
                format!("not an SES identity in {}", self.region),
                verify,
            );
        };
        let status = attrs.verification_status().as_str().to_string();
        if status != "Success" {
            return Check::fail(name, format!("verification {status}"), verify);
        }
        let dkim = self
            .ses
            .get_identity_dkim_attributes()
            .identities(domain)
            .send()
            .await
            .ok()
            .and_then(|o| o.dkim_attributes().get(domain).cloned());
        match dkim {
            Some(d) if d.dkim_enabled() && d.dkim_verification_status().as_str() == "Success" => {
                Check::pass(name, "verified, DKIM verified")
            }
            Some(d) => Check::warn(
                name,
                format!(
                    "verified, DKIM {} ({})",
                    d.dkim_verification_status().as_str(),
                    if d.dkim_enabled() {
                        "enabled"
                    } else {
                        "disabled"
                    }
                ),
                "publish the three DKIM CNAMEs (stack output DkimRecords)",
            ),
            None => Check::warn(name, "verified, no DKIM", "enable Easy DKIM for the domain"),
        }
    }

    async fn receipt_rules(&self, config: &Config) -> Check {
        let name = "receipt rules";
        let s = &self.settings;
        let set = match self.ses.describe_active_receipt_rule_set().send().await {
            Ok(o) => o,
            Err(e) => {
                return Check::fail(
                    name,
                    err(&e),
                    "SES receiving exists only in some regions; check the region",
                );
            }
        };
        let Some(meta) = set.metadata() else {
            return Check::fail(
                name,
                format!(
                    "no active receipt rule set in {}: SES rejects all mail",
                    self.region
                ),
                "activate ours: `aws ses set-active-receipt-rule-set --rule-set-name standby-mx` \
                 (scripts/deploy does this)",
            );
        };
        let set_name = meta.name().unwrap_or("?").to_string();
        // Our rules, each with the position of its S3 action into our bucket and prefix.
        let ours: Vec<(&ReceiptRule, usize)> = set
            .rules()
            .iter()
            .filter_map(|r| stores_to(r, &s.bucket, &s.prefix).map(|i| (r, i)))
            .collect();
        if ours.is_empty() {
            return Check::fail(
                name,
                format!(
                    "the active rule set `{set_name}` has no rule storing to s3://{}/{}",
                    s.bucket, s.prefix
                ),
                "deploy infra/template.yaml and activate its rule set (scripts/deploy)",
            );
        }
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        for &(r, i) in &ours {
            let rname = r.name();
            if !r.enabled() {
                problems.push(format!("rule {rname} is disabled"));
            }
            if !r.actions()[i + 1..]
                .iter()
                .any(|a| a.lambda_action().is_some())
            {
                problems.push(format!(
                    "rule {rname} invokes no Lambda after its S3 action"
                ));
            }
            if !r.scan_enabled() {
                warnings.push(format!("rule {rname} does not scan for spam and viruses"));
            }
            // SES always offers STARTTLS (Amazon's certificate for its inbound endpoint);
            // `Require` bounces senders that do not use it, which a primary may accept.
            if r.tls_policy() == Some(&aws_sdk_ses::types::TlsPolicy::Require) {
                warnings.push(format!(
                    "rule {rname} has TlsPolicy Require: SES bounces senders that do not \
                     use TLS, mail the primary may take"
                ));
            }
        }
        let enabled: Vec<&ReceiptRule> = ours
            .iter()
            .map(|&(r, _)| r)
            .filter(|r| r.enabled())
            .collect();
        let covered = |addr: &str| {
            let addr = addr.to_ascii_lowercase();
            let domain = addr.rsplit_once('@').map_or(addr.as_str(), |(_, d)| d);
            enabled.iter().any(|r| {
                r.recipients().is_empty()
                    || r.recipients().iter().any(|c| {
                        let c = c.to_ascii_lowercase();
                        c == addr || c == domain
                    })
            })
        };
        let mut wanted: Vec<String> = config.domains.clone();
        match config.load_recipients() {
            Ok(addresses) => {
                let mut addresses: Vec<String> = addresses.into_iter().flatten().collect();
                addresses.sort();
                wanted.extend(addresses);
            }
            Err(e) => problems.push(e.to_string()),
        }
        let missing: Vec<&String> = wanted.iter().filter(|w| !covered(w)).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "not covered by an enabled rule: {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let rules = ours
            .iter()
            .map(|(r, _)| r.name())
            .collect::<Vec<_>>()
            .join(", ");
        if !problems.is_empty() {
            return Check::fail(
                name,
                format!("active set `{set_name}` ({rules}): {}", problems.join("; ")),
                "redeploy with the domains/recipients (scripts/deploy --recipients FILE)",
            );
        }
        if !warnings.is_empty() {
            return Check::warn(
                name,
                format!("active set `{set_name}` ({rules}): {}", warnings.join("; ")),
                "turn on ScanEnabled (the template does); keep TlsPolicy Optional \
                 (ReceiveTlsPolicy) unless your own policy refuses mail without TLS",
            );
        }
        Check::pass(
            name,
            format!(
                "active set `{set_name}` ({rules}) stores to s3://{}/{} then invokes ingest; \
                 TLS offered (TlsPolicy Optional)",
                s.bucket, s.prefix
            ),
        )
    }

    async fn bucket(&self) -> Check {
        let b = &self.settings.bucket;
        let name = "bucket";
        let s3 = &self.clients.s3;
        if let Err(e) = s3.head_bucket().bucket(b).send().await {
            return Check::fail(
                name,
                format!("s3://{b}: {}", err(&e)),
                "deploy the stack (or `standby aws-init` for a test setup)",
            );
        }
        let mut warnings: Vec<String> = Vec::new();
        match s3.get_bucket_versioning().bucket(b).send().await {
            Ok(v) if v.status().is_some_and(|s| s.as_str() == "Enabled") => {}
            Ok(_) => warnings.push("versioning is off".into()),
            Err(e) => warnings.push(format!("versioning unknown ({})", err(&e))),
        }
        let block = s3.get_public_access_block().bucket(b).send().await;
        let blocked = block
            .ok()
            .and_then(|o| o.public_access_block_configuration().cloned())
            .is_some_and(|c| {
                c.block_public_acls() == Some(true)
                    && c.block_public_policy() == Some(true)
                    && c.ignore_public_acls() == Some(true)
                    && c.restrict_public_buckets() == Some(true)
            });
        if !blocked {
            warnings.push("public access is not fully blocked".into());
        }
        if s3
            .get_object_lock_configuration()
            .bucket(b)
            .send()
            .await
            .is_ok_and(|o| {
                o.object_lock_configuration()
                    .and_then(|c| c.rule())
                    .and_then(|r| r.default_retention())
                    .is_some()
            })
        {
            return Check::fail(
                name,
                format!("s3://{b} has a default Object Lock retention: SES cannot write to it"),
                "remove the default retention (keep Object Lock for an archive bucket)",
            );
        }
        if warnings.is_empty() {
            Check::pass(name, format!("s3://{b}: versioned, public access blocked"))
        } else {
            Check::warn(
                name,
                format!("s3://{b}: {}", warnings.join(", ")),
                "deploy infra/template.yaml, which sets both",
            )
        }
    }

    async fn table(&self) -> Check {
        let t = &self.settings.table;
        let name = "table";
        let ddb = &self.clients.dynamodb;
        let desc = match ddb.describe_table().table_name(t).send().await {
            Ok(d) => d,
            Err(e) => {
                return Check::fail(
                    name,
                    format!("{t}: {}", err(&e)),
                    "deploy the stack (or `standby aws-init` for a test setup)",
                );
            }
        };
        let Some(table) = desc.table() else {
            return Check::fail(name, format!("{t}: no description"), "deploy the stack");
        };
        let ours = schema::global_secondary_indexes();
        let gsi_ok = ours.iter().all(|o| {
            table
                .global_secondary_indexes()
                .iter()
                .any(|g| g.index_name() == Some(o.index_name()) && g.key_schema() == o.key_schema())
        });
        if table.key_schema() != schema::key_schema().as_slice() || !gsi_ok {
            return Check::fail(
                name,
                format!(
                    "{t}: keys {:?}, indexes {GSI} ({GSI_PK}, {GSI_SK}), by_sender, by_rcpt {}",
                    table
                        .key_schema()
                        .iter()
                        .map(|k| k.attribute_name())
                        .collect::<Vec<_>>(),
                    if gsi_ok { "present" } else { "missing" }
                ),
                "the table must be the template's (src/backend/aws/schema.rs); recreate it",
            );
        }
        let ttl = ddb
            .describe_time_to_live()
            .table_name(t)
            .send()
            .await
            .ok()
            .and_then(|o| o.time_to_live_description().cloned());
        let ttl_on = ttl.is_some_and(|d| {
            d.attribute_name() == Some(TTL_ATTRIBUTE)
                && d.time_to_live_status()
                    .is_some_and(|s| matches!(s.as_str(), "ENABLED" | "ENABLING"))
        });
        if !ttl_on {
            return Check::warn(
                name,
                format!("{t}: TTL on {TTL_ATTRIBUTE} is off: delivered records are never removed"),
                format!(
                    "aws dynamodb update-time-to-live --table-name {t} --time-to-live-specification Enabled=true,AttributeName={TTL_ATTRIBUTE}"
                ),
            );
        }
        Check::pass(
            name,
            format!("{t}: keys and index as the code expects, TTL on {TTL_ATTRIBUTE}"),
        )
    }
}

/// Index of the rule's S3 action writing to `bucket`/`prefix`, if it has one.
fn stores_to(rule: &ReceiptRule, bucket: &str, prefix: &str) -> Option<usize> {
    rule.actions().iter().position(|a: &ReceiptAction| {
        a.s3_action().is_some_and(|s| {
            s.bucket_name() == bucket && s.object_key_prefix().unwrap_or("") == prefix
        })
    })
}
