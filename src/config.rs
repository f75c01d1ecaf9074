//! Configuration: one TOML file, every key overridable by a `STANDBY_` environment variable.
//!
//! The file is found as other daemons find theirs: `--config PATH`, else `STANDBY_CONFIG`,
//! else the first of [`SEARCH_PATH`] that exists ([`Config::locate`]).
//!
//! Every key has exactly one environment name, the same in the CLI, `standby serve` and
//! the Lambda functions: `STANDBY_LISTEN` sets `listen`, `STANDBY_PRIMARY_ADDRESS` sets
//! `[primary] address` (the key path in upper case joined by `_`, derived from the structs
//! in [`env`]). Environment values are text, so numeric and list keys also accept text
//! (`STANDBY_DOMAINS=a.test,b.test`). `STANDBY_CONFIG`, `STANDBY_LOG` and the variables a
//! `*_env` key names (the primary's password) are the only other `STANDBY_` variables;
//! any other is an error that names it and the closest known name.
//!
//! Errors name the file and line (or the variable), the key and what is wrong; unknown
//! keys are errors, because a misspelt `max_mesage_size` silently ignored is a limit not
//! enforced.

mod continuity;
mod env;
mod listen;

pub use continuity::{AlertsConfig, ContinuityConfig};
pub use env::Names as EnvNames;
pub use listen::{BindError, ListenAddrs};

use std::collections::HashSet;
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::error::ConfigError;

/// Prefix of every environment variable that overrides a key.
pub const ENV_PREFIX: &str = "STANDBY_";
/// Variable naming the config file (same as `--config`).
pub const ENV_CONFIG: &str = "STANDBY_CONFIG";
/// Variable holding the tracing filter (`info`, `standby=debug`, ...).
pub const ENV_LOG: &str = "STANDBY_LOG";
/// Where the config file is looked for when neither `--config` nor `STANDBY_CONFIG`
/// names one: the working directory, then the system's place.
pub const SEARCH_PATH: [&str; 2] = ["./standby.toml", "/etc/standby/standby.toml"];

/// Every config variable, from the structs (see [`env`]).
static NAMES: LazyLock<EnvNames> = LazyLock::new(EnvNames::of::<Config>);

/// What the Lambda functions assume before their environment is applied: the AWS
/// backend, and STARTTLS required towards the primary (it is reached over the internet).
const LAMBDA_DEFAULTS: &str = "backend = \"aws\"\nhostname = \"standby-drain.invalid\"\n\
node_id = \"lambda\"\n[primary]\naddress = \"\"\ntls = \"required\"\n";
/// The ingest function never talks to the primary; it reads only the storage, journal
/// and retention keys. `.invalid` (RFC 2606) stands in for the primary it has none of.
const INGEST_DEFAULTS: &str = "backend = \"aws\"\nhostname = \"standby-ingest.invalid\"\n\
[primary]\naddress = \"no-primary.invalid\"\n";
/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name in our banner, EHLO and `Received:` header: a fully qualified domain name
    /// (primaries refuse short names in EHLO). Default: `/etc/hostname`, if it holds one.
    #[serde(default, deserialize_with = "fqdn")]
    pub hostname: String,
    /// The SMTP listener: one address or several (`["0.0.0.0:25", "[::]:25"]`).
    #[serde(default = "default_listen")]
    pub listen: ListenAddrs,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Where messages and the index live: `local` (files + SQLite under `data_dir`, the
    /// default) or `aws` (S3 `bucket` + DynamoDB `table`).
    #[serde(default, deserialize_with = "lenient")]
    pub backend: BackendKind,
    /// S3 bucket of the raw messages (`backend = "aws"`).
    #[serde(default)]
    pub bucket: Option<String>,
    /// DynamoDB table of the index (`backend = "aws"`).
    #[serde(default)]
    pub table: Option<String>,
    /// Key prefix of the raw messages in the bucket: the receipt rule's S3 object key prefix.
    /// (`standby serve` on AWS writes its own under [`SERVE_PREFIX`], never here.)
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// This process's name among the nodes that share one index (several `standby serve`
    /// on one bucket and table, the drain function): its record of the primary's health
    /// is kept under it. Default: the machine's host name (`lambda` in the functions).
    #[serde(default)]
    pub node_id: Option<String>,
    /// S3 bucket with Object Lock enabled where journal copies are archived with a
    /// per-object retention of `[retention] journal_days` (`backend = "aws"`). Unset: no
    /// archive copy.
    #[serde(default)]
    pub archive_bucket: Option<String>,
    /// URL of the ingest function's on-failure SQS queue (the template's
    /// `IngestFailures`): the drain function ingests the events it holds, with their exact
    /// envelope, each run. Unset: not read.
    #[serde(default)]
    pub ingest_failures_queue: Option<String>,
    /// Object Lock mode of the archive copies: `governance` (deletable with the
    /// `s3:BypassGovernanceRetention` permission) or `compliance` (by no one, root
    /// included, until the date).
    #[serde(default, deserialize_with = "lenient")]
    pub archive_lock_mode: LockMode,
    /// AWS region; the standard chain (`AWS_REGION`, profile) when unset.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint of an emulator (moto); `AWS_ENDPOINT_URL` works too.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Domains we accept mail for; anything else is refused (never an open relay).
    /// Required for the local backend; on AWS, SES receipt rules decide, and this list only
    /// limits which header addresses the reconciler may take as recipients.
    #[serde(default, deserialize_with = "domain_list")]
    pub domains: Vec<String>,
    /// Optional file of accepted addresses, one per line; others get 550 5.1.1.
    #[serde(default)]
    pub recipients: Option<PathBuf>,
    #[serde(default = "default_max_message_size", deserialize_with = "lenient")]
    pub max_message_size: u64,
    #[serde(default = "default_max_recipients", deserialize_with = "lenient")]
    pub max_recipients: usize,
    #[serde(default = "default_max_connections", deserialize_with = "lenient")]
    pub max_connections: usize,
    /// Seconds to wait for a client command (RFC 5321 §4.5.3.2 says 5 minutes): a whole
    /// command line must arrive within it, not just each byte of it.
    #[serde(default = "default_command_timeout", deserialize_with = "lenient")]
    pub command_timeout_secs: u64,
    /// Longest an SMTP session may last, however busy the client keeps it; then 421 4.4.2.
    #[serde(default = "default_session_timeout", deserialize_with = "lenient")]
    pub session_timeout_secs: u64,
    /// Slowest a client may send DATA, averaged from the 354 (after 10 s of grace);
    /// a slower one gets 421 4.4.2 and nothing is stored. 0: no minimum.
    #[serde(default = "default_min_data_rate", deserialize_with = "lenient")]
    pub min_data_rate_bytes_per_sec: u64,
    /// Sessions one client address may hold at once (IPv6: one /64); more get 421 4.7.0.
    #[serde(
        default = "default_max_connections_per_ip",
        deserialize_with = "lenient"
    )]
    pub max_connections_per_ip: usize,
    /// Connections one client address may open per minute (IPv6: one /64); more get
    /// 421 4.7.0. 0 (the default): no limit.
    #[serde(default = "default_max_connection_rate", deserialize_with = "lenient")]
    pub max_connection_rate_per_ip: u32,
    /// Free bytes the spool's file system must keep: below it, MAIL gets 452 4.3.1
    /// (Postfix's `queue_minfree`). Local backend only; 0: no check.
    #[serde(default = "default_min_free_bytes", deserialize_with = "lenient")]
    pub min_free_bytes: u64,
    /// Days held mail is kept before it fails as expired.
    #[serde(default = "default_hold_days", deserialize_with = "lenient")]
    pub hold_days: u32,
    /// Days after receipt that delivered mail is kept, then deleted (AWS backend: DynamoDB
    /// TTL on the record and an S3 lifecycle rule on the object's `standby-state=delivered`
    /// tag). Unset: kept until purged. The local spool keeps delivered mail until purged.
    #[serde(default, deserialize_with = "lenient_opt")]
    pub keep_delivered_days: Option<u32>,
    /// The host name the domains' MX records give for this standby (`standby doctor`
    /// checks it). Default: `inbound-smtp.<region>.amazonaws.com` for the AWS backend,
    /// `hostname` for the local one.
    #[serde(default)]
    pub mx_host: Option<String>,
    /// The name in the `Authentication-Results:` field added on redelivery, and removed
    /// from what senders send (see `crate::model::auth_results`). Default: `hostname`.
    /// Several nodes, or a node and the AWS drain, handing mail to one primary: set the
    /// same value on all of them, the one the primary trusts.
    #[serde(default)]
    pub authserv_id: Option<String>,
    #[serde(default)]
    pub tls: ListenerTls,
    pub primary: PrimaryConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub drain: DrainConfig,
    #[serde(default)]
    pub dsn: DsnConfig,
    #[serde(default)]
    pub journal: JournalConfig,
    #[serde(default)]
    pub retention: RetentionPolicy,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub users: UsersConfig,
    #[serde(default)]
    pub web: WebConfig,
    #[serde(default)]
    pub submission: SubmissionConfig,
    #[serde(default)]
    pub imap: MailAccessConfig,
    #[serde(default)]
    pub pop3: MailAccessConfig,
    #[serde(default)]
    pub outbound: OutboundConfig,
    #[serde(default)]
    pub continuity: ContinuityConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub filter: FilterConfig,
    #[serde(default)]
    pub doctor: DoctorConfig,
    #[serde(default)]
    pub arc: ArcConfig,
}

/// An ARC set (RFC 8617) on mail the drain hands back (`[arc]`, see
/// `crate::outbound::arc`): the primary can then trust the standby's verdicts by its
/// signing domain (rspamd's `whitelisted_signers`) instead of by address.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArcConfig {
    /// The signing domain (`d=`); its key is published at `<selector>._domainkey.<domain>`.
    pub domain: Option<String>,
    pub selector: Option<String>,
    /// The private key, PEM: RSA (2048 bits or more) or Ed25519.
    pub key: Option<PathBuf>,
    /// DNS server for checking an ARC chain a message came with, `IP:port`; the system's
    /// resolvers when unset.
    #[serde(default, deserialize_with = "lenient_opt")]
    pub nameserver: Option<SocketAddr>,
}

/// The submission listener for users' own mail clients (`[submission]`, see
/// `crate::submission`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmissionConfig {
    /// With STARTTLS (port 587); unset: not served.
    #[serde(default)]
    pub listen: Option<ListenAddrs>,
    /// Implicit TLS (port 465); needs `[tls]`.
    #[serde(default)]
    pub listen_tls: Option<ListenAddrs>,
    /// AUTH without TLS: for loopback tests only.
    #[serde(default, deserialize_with = "lenient")]
    pub allow_plaintext_auth: bool,
    /// Messages a user may send an hour (past it: 451 4.7.1).
    #[serde(default = "default_rate_per_hour", deserialize_with = "lenient")]
    pub rate_per_hour: u32,
}

impl Default for SubmissionConfig {
    fn default() -> Self {
        SubmissionConfig {
            listen: None,
            listen_tls: None,
            allow_plaintext_auth: false,
            rate_per_hour: default_rate_per_hour(),
        }
    }
}

fn default_rate_per_hour() -> u32 {
    200
}

/// The emergency mailbox in users' own mail clients: `[imap]` (ports 143 with STARTTLS,
/// 993) and `[pop3]` (110 with STLS, 995), see `crate::imap` and `crate::pop3`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailAccessConfig {
    /// With STARTTLS (STLS); unset: not served.
    #[serde(default)]
    pub listen: Option<ListenAddrs>,
    /// Implicit TLS; needs `[tls]`.
    #[serde(default)]
    pub listen_tls: Option<ListenAddrs>,
    /// Passwords without TLS: for loopback tests only.
    #[serde(default, deserialize_with = "lenient")]
    pub allow_plaintext_auth: bool,
}

/// What `standby doctor` holds the setup to (`[doctor]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoctorConfig {
    /// Days after which the recipients and users files (copies of the primary's lists)
    /// are reported as stale.
    #[serde(default = "default_max_list_age", deserialize_with = "lenient")]
    pub max_list_age_days: u32,
    /// Certificate authorities (PEM) trusted besides the system's when the doctor fetches
    /// MTA-STS policies and checks the listener's certificate (a private or test CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The probe of the primary (opt-in: it sends one real message): the envelope sender,
    /// a domain whose SPF does not allow the standby's address...
    #[serde(default)]
    pub test_sender: Option<String>,
    /// ...and the recipient at the primary that gets it.
    #[serde(default)]
    pub test_recipient: Option<String>,
}

impl Default for DoctorConfig {
    fn default() -> Self {
        DoctorConfig {
            max_list_age_days: default_max_list_age(),
            ca_file: None,
            test_sender: None,
            test_recipient: None,
        }
    }
}

fn default_max_list_age() -> u32 {
    7
}

/// What `standby serve`'s MX listener checks of a client before it takes mail
/// (`[filter]`, see `crate::smtp::dnsbl`): spammers aim at the backup MX because it is
/// often filtered less than the primary.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// DNS blocklists (RFC 5782) the client's address is looked up in at connect, as
    /// zone names (`zen.spamhaus.org`); a client listed in one is answered 554 with the
    /// list's reason. A list that does not answer in time lets the client in.
    #[serde(default, deserialize_with = "zone_list")]
    pub dnsbl: Vec<String>,
    /// DNS server for the blocklist lookups, `IP:port`; the system's resolvers when unset.
    #[serde(default, deserialize_with = "lenient_opt")]
    pub nameserver: Option<SocketAddr>,
    /// Seconds the blocklist lookups of one connection may take together.
    #[serde(default = "default_dnsbl_timeout", deserialize_with = "lenient")]
    pub dnsbl_timeout_secs: u64,
    /// rspamd's normal worker (`http://127.0.0.1:11333`): each message the MX listener
    /// takes is checked there (`/checkv2`) before the 250: refused above rspamd's reject
    /// score, stored as spam (the Junk view) above its spam score. rspamd down or slow:
    /// the message is taken and recorded unfiltered.
    #[serde(default)]
    pub rspamd_url: Option<String>,
    /// Seconds the rspamd check of one message may take.
    #[serde(default = "default_rspamd_timeout", deserialize_with = "lenient")]
    pub rspamd_timeout_secs: u64,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            dnsbl: Vec::new(),
            nameserver: None,
            dnsbl_timeout_secs: default_dnsbl_timeout(),
            rspamd_url: None,
            rspamd_timeout_secs: default_rspamd_timeout(),
        }
    }
}

fn default_rspamd_timeout() -> u64 {
    15
}

fn default_dnsbl_timeout() -> u64 {
    5
}

/// How mail users send to outside recipients leaves (`[outbound]`, see
/// `crate::outbound`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// `ses`, `relay` or `direct`; default: `ses` on the AWS backend, `relay` when
    /// `relay` is set, else `direct` ([`Config::outbound_mode`]).
    #[serde(default, deserialize_with = "lenient_opt")]
    pub mode: Option<OutboundMode>,
    /// The smarthost, `host:port`.
    #[serde(default)]
    pub relay: Option<String>,
    /// Its login, when it wants one (the password in `relay_password_env`).
    #[serde(default)]
    pub relay_user: Option<String>,
    #[serde(default)]
    pub relay_password_env: Option<String>,
    /// `required` (default: verify the certificate), `opportunistic` or `none`.
    #[serde(default, deserialize_with = "lenient_opt")]
    pub relay_tls: Option<TlsMode>,
    /// CA bundle for the smarthost's certificate (default: the system's).
    #[serde(default)]
    pub relay_ca_file: Option<PathBuf>,
    /// AUTH without TLS to the smarthost (a relay on a trusted network only).
    #[serde(default, deserialize_with = "lenient")]
    pub relay_allow_plaintext_auth: bool,
    /// The DKIM selector and RSA key (PEM, PKCS#1 or PKCS#8) mail to outside recipients
    /// is signed with (`relay` and `direct`), for every domain in `domains`.
    #[serde(default)]
    pub dkim_selector: Option<String>,
    #[serde(default)]
    pub dkim_key: Option<PathBuf>,
    /// Per-domain keys (`[[outbound.dkim]]`: `domain`, `selector`, `key`), instead of
    /// the shared one for their domain; an Ed25519 key signs besides the RSA one. In the
    /// environment, the same as JSON.
    #[serde(default, deserialize_with = "dkim_keys")]
    pub dkim: Vec<DkimKeyConfig>,
    /// The DNS server the `direct` mode looks MX records up at, `IP:port`; the system's
    /// resolvers when unset.
    #[serde(default, deserialize_with = "lenient_opt")]
    pub nameserver: Option<SocketAddr>,
    /// `direct` mode may connect to MX hosts at loopback, private, link-local or
    /// unique-local addresses (a test network); off, a recipient domain whose MX points
    /// there (at the primary, say) is not reachable through the standby.
    #[serde(default, deserialize_with = "lenient")]
    pub direct_allow_private: bool,
    /// Where the copy of what a user sent goes at the primary: `{local}+sent@{domain}`
    /// (the sender's own parts); unset: the sender's address itself.
    #[serde(default)]
    pub sent_copy: Option<String>,
}

/// `[outbound] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundMode {
    Ses,
    Relay,
    Direct,
}

impl FromStr for OutboundMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ses" => Ok(OutboundMode::Ses),
            "relay" => Ok(OutboundMode::Relay),
            "direct" => Ok(OutboundMode::Direct),
            _ => Err(format!("unknown outbound mode `{s}` (ses, relay, direct)")),
        }
    }
}

/// One `[[outbound.dkim]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKeyConfig {
    pub domain: String,
    pub selector: String,
    pub key: PathBuf,
}

fn dkim_keys<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<DkimKeyConfig>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Native(Vec<DkimKeyConfig>),
        Json(String),
    }
    match Either::deserialize(d)? {
        Either::Native(v) => Ok(v),
        Either::Json(s) if s.trim().is_empty() => Ok(Vec::new()),
        Either::Json(s) => serde_json::from_str(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "DKIM keys as JSON ([{{\"domain\": ..., \"selector\": ..., \"key\": ...}}]): {e}"
            ))
        }),
    }
}

/// The emergency inbox's users (`[users]`, see [`crate::users`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersConfig {
    /// The Dovecot passwd-file (local backend; on AWS the bucket's `users/passwd`).
    /// Relative to the working directory, like `recipients`.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Added to user names without a domain (`alice` -> `alice@<default_domain>`).
    #[serde(default)]
    pub default_domain: Option<String>,
    /// CSV file (`address,alias`) of other addresses a user may read (local backend; on
    /// AWS the bucket's `users/aliases.csv`).
    #[serde(default)]
    pub aliases: Option<PathBuf>,
    /// How many days of delivered mail and journal copies still kept a user sees besides
    /// the held mail.
    #[serde(default = "default_history_days", deserialize_with = "lenient")]
    pub history_days: u32,
    /// Users (their addresses) who may use the operator console (`/console`) as well as
    /// their own inbox.
    #[serde(default, deserialize_with = "mail_address_list")]
    pub admins: Vec<String>,
}

impl Default for UsersConfig {
    fn default() -> Self {
        UsersConfig {
            file: None,
            default_domain: None,
            aliases: None,
            history_days: default_history_days(),
            admins: Vec::new(),
        }
    }
}

fn default_history_days() -> u32 {
    30
}

/// The emergency inbox's web app (`[web]`, see [`crate::web`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Where `standby serve` serves it (HTTPS when `[tls]` has a certificate); unset:
    /// not served.
    #[serde(default)]
    pub listen: Option<ListenAddrs>,
    /// The address users reach it at (`https://standby.example.com`), for links.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The variable holding the key that signs sessions (at least 32 bytes); unset in
    /// `serve`: a random key made at start, so sessions end with a restart.
    #[serde(default)]
    pub session_key_env: Option<String>,
    /// How long a login lasts.
    #[serde(default = "default_session_hours", deserialize_with = "lenient")]
    pub session_hours: u32,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: None,
            public_url: None,
            session_key_env: None,
            session_hours: default_session_hours(),
        }
    }
}

fn default_session_hours() -> u32 {
    12
}

/// Metrics (`[metrics]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The drain function's CloudWatch metrics dimension `Stack` (the template sets the
    /// stack's name); unset: no metrics.
    #[serde(default)]
    pub stack: Option<String>,
    /// The SNS topic the stack's alarms notify (its `AlarmTopic` output; scripts/deploy
    /// writes it into the operator's config): `standby doctor` checks that it has a
    /// confirmed subscription.
    #[serde(default)]
    pub alarm_topic: Option<String>,
    /// Where `standby serve` serves `/metrics` (Prometheus) on its own, over plain HTTP
    /// (a loopback or private address for the scraper); the emergency inbox's listener
    /// serves it too.
    #[serde(default)]
    pub listen: Option<ListenAddrs>,
    /// The variable holding the bearer token the emergency inbox's `/metrics` asks for
    /// (`Authorization: Bearer <token>`); unset: the inbox serves no `/metrics`.
    #[serde(default)]
    pub token_env: Option<String>,
}

/// Where `standby serve` on the AWS backend stores the messages it receives: its own
/// prefix, never the SES receipt rule's (`prefix`), so the reconciler, which indexes
/// unindexed SES objects from their headers, never takes one of ours for SES's.
pub const SERVE_PREFIX: &str = "serve/";

/// Which storage backend a config uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Local,
    Aws,
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(BackendKind::Local),
            "aws" => Ok(BackendKind::Aws),
            other => Err(format!("unknown backend `{other}` (local, aws)")),
        }
    }
}

/// Certificate for STARTTLS on our listener; STARTTLS is offered only when both are set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// How to reach the primary.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrimaryConfig {
    /// `host:port` (port 25 when omitted). Connected to directly, never by MX lookup.
    pub address: String,
    #[serde(default, deserialize_with = "lenient")]
    pub tls: TlsMode,
    #[serde(default = "yes", deserialize_with = "lenient")]
    pub tls_verify: bool,
    /// Extra CA certificates (PEM) to trust besides the system store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub auth_user: Option<String>,
    /// Name of the environment variable holding the password (never the password itself).
    #[serde(default)]
    pub auth_password_env: Option<String>,
    /// Send the AUTH password over a connection without TLS. Off by default: only for a
    /// primary on a trusted network that cannot do STARTTLS.
    #[serde(default, deserialize_with = "lenient")]
    pub allow_plaintext_auth: bool,
    /// Seconds to wait for a reply of the primary, or to hand it a block of data: the
    /// default of every stage below left unset, and the value for the stages without a
    /// key of their own (connect, EHLO, STARTTLS and the handshake, AUTH, RSET, QUIT).
    /// Unset: each stage key takes RFC 5321 §4.5.3.2's value, the others 60 s.
    #[serde(default, deserialize_with = "lenient_opt")]
    pub timeout_secs: Option<u64>,
    /// The 220 greeting (RFC 5321: 5 minutes).
    #[serde(default, deserialize_with = "lenient_opt")]
    pub greeting_timeout_secs: Option<u64>,
    /// The reply to MAIL (5 minutes).
    #[serde(default, deserialize_with = "lenient_opt")]
    pub mail_timeout_secs: Option<u64>,
    /// The reply to each RCPT (5 minutes).
    #[serde(default, deserialize_with = "lenient_opt")]
    pub rcpt_timeout_secs: Option<u64>,
    /// The 354 to DATA (2 minutes).
    #[serde(default, deserialize_with = "lenient_opt")]
    pub data_timeout_secs: Option<u64>,
    /// Each block of message data written (3 minutes).
    #[serde(default, deserialize_with = "lenient_opt")]
    pub block_timeout_secs: Option<u64>,
    /// The reply to the final dot (10 minutes: the primary's content filters run then).
    /// Past it the message is deferred as ambiguous: the primary may have it.
    #[serde(default, deserialize_with = "lenient_opt")]
    pub dot_timeout_secs: Option<u64>,
    /// The name the primary's certificate is checked against (and sent as SNI), for an
    /// `address` that is an IP literal or not the certificate's name. Default: the host
    /// part of `address`.
    #[serde(default)]
    pub tls_server_name: Option<String>,
}

/// How long the drain waits at each stage of a session with the primary (`[primary]
/// *_timeout_secs`), resolved: a stage key, else `timeout_secs`, else the stage's
/// RFC 5321 §4.5.3.2 value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageTimeouts {
    /// Connect, EHLO, STARTTLS and the handshake, AUTH, RSET, QUIT.
    pub other: Duration,
    pub greeting: Duration,
    pub mail: Duration,
    pub rcpt: Duration,
    pub data: Duration,
    pub block: Duration,
    pub dot: Duration,
}

impl StageTimeouts {
    /// The same limit for every stage (the health probe's `[health] timeout_secs`).
    pub fn all(d: Duration) -> Self {
        StageTimeouts {
            other: d,
            greeting: d,
            mail: d,
            rcpt: d,
            data: d,
            block: d,
            dot: d,
        }
    }
}

impl PrimaryConfig {
    /// Each stage's timeout (see [`StageTimeouts`]); at least one second each.
    pub fn timeouts(&self) -> StageTimeouts {
        let pick = |key: Option<u64>, rfc: u64| {
            Duration::from_secs(key.or(self.timeout_secs).unwrap_or(rfc).max(1))
        };
        StageTimeouts {
            other: pick(None, default_primary_timeout()),
            greeting: pick(self.greeting_timeout_secs, 300),
            mail: pick(self.mail_timeout_secs, 300),
            rcpt: pick(self.rcpt_timeout_secs, 300),
            data: pick(self.data_timeout_secs, 120),
            block: pick(self.block_timeout_secs, 180),
            dot: pick(self.dot_timeout_secs, 600),
        }
    }
}

/// Where the AWS backend's data lives (from the config or the Lambda environment).
#[derive(Debug, Clone)]
pub struct AwsSettings {
    pub bucket: String,
    pub table: String,
    /// Object key prefix of raw messages, e.g. `incoming/`.
    pub prefix: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// Delivered records expire (TTL) this many days after receipt.
    pub keep_delivered_days: Option<u32>,
    /// The Object Lock bucket journal copies are archived in.
    pub archive: Option<ArchiveSettings>,
}

/// An S3 bucket with Object Lock enabled, for journal copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSettings {
    pub bucket: String,
    pub mode: LockMode,
}

/// S3 Object Lock retention mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    #[default]
    Governance,
    Compliance,
}

impl FromStr for LockMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "governance" => Ok(LockMode::Governance),
            "compliance" => Ok(LockMode::Compliance),
            other => Err(format!(
                "unknown Object Lock mode `{other}` (governance, compliance)"
            )),
        }
    }
}

/// STARTTLS towards the primary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    None,
    #[default]
    Opportunistic,
    Required,
}

impl FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(TlsMode::None),
            "opportunistic" => Ok(TlsMode::Opportunistic),
            "required" => Ok(TlsMode::Required),
            other => Err(format!(
                "unknown TLS mode `{other}` (none, opportunistic, required)"
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default = "default_interval", deserialize_with = "lenient")]
    pub interval_secs: u64,
    #[serde(default = "default_up_after", deserialize_with = "lenient")]
    pub up_after: u32,
    #[serde(default = "default_down_after", deserialize_with = "lenient")]
    pub down_after: u32,
    /// Each probe logs in as the drain does (AUTH when configured); `false` skips AUTH
    /// for a primary that rate-limits logins.
    #[serde(default = "yes", deserialize_with = "lenient")]
    pub probe_auth: bool,
    /// Seconds the probe waits at each stage (connect, greeting, EHLO, STARTTLS, AUTH).
    #[serde(default = "default_probe_timeout", deserialize_with = "lenient")]
    pub timeout_secs: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_secs: default_interval(),
            up_after: default_up_after(),
            down_after: default_down_after(),
            probe_auth: true,
            timeout_secs: default_probe_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainConfig {
    /// Parallel connections to the primary.
    #[serde(default = "default_concurrency", deserialize_with = "lenient")]
    pub concurrency: usize,
    /// Messages per second at most; 0 means no limit.
    #[serde(default, deserialize_with = "lenient")]
    pub rate_per_sec: u32,
    /// Gradual redelivery: once the primary is back, start at this many messages a
    /// second and double every `ramp_step_secs` up to `rate_per_sec`, so a recovering
    /// primary is not flooded. Unset: no ramp. `standby drain --force` skips it.
    #[serde(default, deserialize_with = "lenient_opt")]
    pub ramp_start_per_sec: Option<u32>,
    /// How long each step of the ramp lasts.
    #[serde(default = "default_ramp_step", deserialize_with = "lenient")]
    pub ramp_step_secs: u64,
    /// How long a claim on a message lasts; a crashed worker's messages return after it.
    #[serde(default = "default_lease", deserialize_with = "lenient")]
    pub lease_secs: u64,
    /// How far the clocks of the drains sharing one index may disagree: a lease is taken
    /// over only once it ended this long ago by the claimer's clock.
    #[serde(default = "default_clock_skew", deserialize_with = "lenient")]
    pub clock_skew_secs: u64,
    /// Circuit breaker: after this many messages in a row refused with 5xx (no delivery
    /// in between) the run stops and draining stays halted until `standby drain
    /// --force`; a primary that came back empty must not fail the whole backlog. 0 turns
    /// it off.
    #[serde(default = "default_breaker_5xx", deserialize_with = "lenient")]
    pub breaker_5xx: u32,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            concurrency: default_concurrency(),
            rate_per_sec: 0,
            ramp_start_per_sec: None,
            ramp_step_secs: default_ramp_step(),
            lease_secs: default_lease(),
            clock_skew_secs: default_clock_skew(),
            breaker_5xx: default_breaker_5xx(),
        }
    }
}

fn default_ramp_step() -> u64 {
    60
}

/// Bounces (RFC 3464 DSNs) for held mail that fails: sent only to authenticated senders,
/// never for `<>`, at most one per message (see `crate::dsn`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DsnConfig {
    /// Send DSNs to authenticated senders; off: every failed message is parked for the operator.
    #[serde(default = "yes", deserialize_with = "lenient")]
    pub enabled: bool,
    /// Name in the DSN (`Reporting-MTA`, `MAILER-DAEMON@...`). Default: `mx_host`, else `hostname`.
    #[serde(default)]
    pub reporting_mta: Option<String>,
    /// Check the sender's SPF of what `standby serve` accepts (after the 250, in the
    /// background): without a pass (or a DMARC pass from SES on AWS) no DSN is ever sent.
    #[serde(default = "yes", deserialize_with = "lenient")]
    pub spf: bool,
    /// DNS server for the SPF lookups, `IP:port`; the system's resolvers when unset.
    #[serde(default, deserialize_with = "lenient_opt")]
    pub nameserver: Option<SocketAddr>,
    /// Seconds one SPF lookup may take (in the background after the 250, or when a bounce
    /// waits for a verdict still pending); then `TEMPERROR`. The 250 never waits for it.
    #[serde(default = "default_spf_timeout", deserialize_with = "lenient")]
    pub spf_timeout_secs: u64,
}

impl Default for DsnConfig {
    fn default() -> Self {
        DsnConfig {
            enabled: true,
            reporting_mta: None,
            spf: true,
            nameserver: None,
            spf_timeout_secs: default_spf_timeout(),
        }
    }
}

/// Journal intake (see `crate::journal`): copies of all mail the primary accepts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// Addresses the primary sends its journal copies to, e.g.
    /// `journal@standby.example.com`; `journal+user=domain@...` matches too. Their domain
    /// is accepted for these addresses only. Empty: no journal intake.
    #[serde(default, deserialize_with = "address_list")]
    pub addresses: Vec<String>,
    /// Networks (CIDR, or single addresses) journal copies may come from; anyone else
    /// gets 550 5.7.1 for a journal address. Unset: loopback and the primary's address.
    #[serde(default, deserialize_with = "net_list")]
    pub allow: Option<Vec<ipnet::IpNet>>,
}

fn net_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<ipnet::IpNet>>, D::Error> {
    let mut out = Vec::new();
    for n in list_or_text(d)? {
        let n = n.trim();
        if n.is_empty() {
            continue;
        }
        let net = n
            .parse::<ipnet::IpNet>()
            .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                D::Error::custom(format!(
                    "`{n}` is not a network like 192.0.2.0/24, 2001:db8::/32 or 192.0.2.1"
                ))
            })?;
        out.push(net);
    }
    Ok(Some(out))
}

/// The networks journal copies are accepted from (`[journal] allow`, or its default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalAllow(Vec<ipnet::IpNet>);

impl JournalAllow {
    pub fn new(nets: Vec<ipnet::IpNet>) -> Self {
        JournalAllow(nets)
    }

    /// The default: loopback, and the primary's addresses.
    pub fn loopback_and(primary: impl IntoIterator<Item = std::net::IpAddr>) -> Self {
        let mut nets: Vec<ipnet::IpNet> = vec![
            "127.0.0.0/8".parse().expect("valid network"),
            "::1/128".parse().expect("valid network"),
        ];
        nets.extend(primary.into_iter().map(ipnet::IpNet::from));
        JournalAllow(nets)
    }

    /// Whether `ip` may send journal copies (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn permits(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|n| n.contains(&ip))
    }

    pub fn nets(&self) -> &[ipnet::IpNet] {
        &self.0
    }
}

fn address_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let raw = list_or_text(d)?;
    let mut out = Vec::new();
    for a in raw {
        let a = a.trim().to_ascii_lowercase();
        if a.is_empty() {
            continue;
        }
        match a.rsplit_once('@') {
            Some((local, domain))
                if !local.is_empty()
                    && !local.contains(['+', '@', '%', '!'])
                    && domain.contains('.')
                    && !a.contains(char::is_whitespace) => {}
            _ => {
                return Err(D::Error::custom(format!(
                    "`{a}` is not a journal address (like journal@standby.example.com, no +extension)"
                )));
            }
        }
        out.push(a);
    }
    Ok(out)
}

/// A list of mail addresses (`[alerts] email`): a TOML array or comma-separated text,
/// each parsed as an RFC 5321 address (what goes into RCPT TO).
pub(crate) fn mail_address_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let mut out = Vec::new();
    for a in list_or_text(d)? {
        let a = a.trim();
        if a.is_empty() {
            continue;
        }
        let parsed = crate::model::Address::parse(a).map_err(|e| {
            D::Error::custom(format!(
                "`{a}` is not a mail address (like admin@example.org): {e}"
            ))
        })?;
        out.push(parsed.decoded());
    }
    Ok(out)
}

/// One confidential rule (`[[retention.confidential]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfidentialRule {
    /// Shown in the audit log and `standby show`.
    pub name: String,
    /// A recipient: `hr@example.com`, or `*@legal.example.com` for a whole domain.
    #[serde(default)]
    pub rcpt: Option<String>,
    /// The envelope sender, same forms.
    #[serde(default)]
    pub sender: Option<String>,
    /// A header field and a text its value contains, case-insensitive:
    /// `X-Classification: confidential`.
    #[serde(default)]
    pub header: Option<String>,
    /// Days to keep a matching message (counted like its class's); 0: not at all.
    pub keep_days: u32,
}

/// The retention policy (`[retention]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    #[serde(default, deserialize_with = "lenient_opt")]
    pub delivered_days: Option<u32>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub failed_days: Option<u32>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub journal_days: Option<u32>,
    /// In a file, `[[retention.confidential]]` tables; in the environment
    /// (`STANDBY_RETENTION_CONFIDENTIAL`, a template parameter), the same as JSON:
    /// `[{"name": "hr", "rcpt": "*@hr.example.com", "keep_days": 0}]`.
    #[serde(default, deserialize_with = "rules")]
    pub confidential: Vec<ConfidentialRule>,
    /// Seconds between retention runs in `standby serve` (default 3600).
    #[serde(default = "hourly", deserialize_with = "lenient")]
    pub interval_secs: u64,
}

fn rules<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ConfidentialRule>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Native(Vec<ConfidentialRule>),
        Json(String),
    }
    match Either::deserialize(d)? {
        Either::Native(v) => Ok(v),
        Either::Json(s) if s.trim().is_empty() => Ok(Vec::new()),
        Either::Json(s) => serde_json::from_str(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "confidential rules as JSON ([{{\"name\": ..., \"rcpt\": ..., \"keep_days\": 0}}]): {e}"
            ))
        }),
    }
}

fn hourly() -> u64 {
    3600
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            delivered_days: None,
            failed_days: None,
            journal_days: None,
            confidential: Vec::new(),
            interval_secs: hourly(),
        }
    }
}

/// The configured journal addresses, and the domains whose recipients a copy keeps.
#[derive(Debug, Clone, Default)]
pub struct Journal {
    /// (local part, domain), lower case.
    addresses: HashSet<(String, String)>,
    domains: HashSet<String>,
}

fn split(addr: &str) -> Option<(String, String)> {
    let (local, domain) = addr.trim().rsplit_once('@')?;
    Some((
        local.to_ascii_lowercase(),
        domain.trim_end_matches('.').to_ascii_lowercase(),
    ))
}

impl Journal {
    pub fn new<'a>(
        addresses: impl IntoIterator<Item = &'a String>,
        domains: impl IntoIterator<Item = &'a String>,
    ) -> Self {
        Journal {
            addresses: addresses.into_iter().filter_map(|a| split(a)).collect(),
            domains: domains
                .into_iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.addresses.is_empty()
    }

    /// The journal domains, which the listener accepts for the journal addresses only.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.addresses.iter().map(|(_, d)| d.as_str())
    }

    /// Whether `addr` is in one of the domains whose recipients a journal copy keeps.
    pub fn keeps(&self, addr: &str) -> bool {
        split(addr).is_some_and(|(_, d)| self.domains.contains(&d))
    }

    /// Whether `addr` is a journal address, bare or with a `+extension`.
    pub fn matches(&self, addr: &str) -> bool {
        self.extension(addr).is_some()
    }

    /// `Some(extension)` (possibly empty) when `addr` is a journal address.
    pub fn extension(&self, addr: &str) -> Option<String> {
        if self.addresses.is_empty() {
            return None; // the common case, asked at every RCPT: no work
        }
        let (local, domain) = split(addr)?;
        let (base, ext) = match local.split_once('+') {
            Some((b, e)) => (b.to_string(), e.to_string()),
            None => (local, String::new()),
        };
        self.addresses.contains(&(base, domain)).then_some(ext)
    }
}

impl Config {
    /// The archive bucket and its lock mode, when one is configured.
    pub fn archive(&self) -> Option<ArchiveSettings> {
        self.archive_bucket
            .clone()
            .filter(|b| !b.trim().is_empty())
            .map(|bucket| ArchiveSettings {
                bucket,
                mode: self.archive_lock_mode,
            })
    }

    /// The retention policy; `keep_delivered_days` (older key) stands in for an unset
    /// `[retention] delivered_days`.
    pub fn retention(&self) -> RetentionPolicy {
        let mut p = self.retention.clone();
        p.delivered_days = p.delivered_days.or(self.keep_delivered_days);
        p
    }

    /// The journal addresses and the domains whose recipients a journal copy keeps.
    pub fn journal(&self) -> Journal {
        Journal::new(&self.journal.addresses, &self.domains)
    }
}

fn default_spf_timeout() -> u64 {
    5
}

/// Where the default `hostname` comes from.
const ETC_HOSTNAME: &str = "/etc/hostname";
/// The example in every error about the hostname.
const HOSTNAME_FIX: &str = "set hostname = \"mx2.example.com\" (this standby's name in DNS)";

/// Why `name` is not a fully qualified domain name a primary accepts in EHLO: at least
/// two labels of letters, digits and inner hyphens (63 bytes at most each, 253 in all), a
/// top-level label that is not all digits (an IP address is not a name), not `localhost`.
pub fn check_fqdn(name: &str) -> Result<(), String> {
    let n = name.strip_suffix('.').unwrap_or(name);
    let labels: Vec<&str> = n.split('.').collect();
    let label_ok = |l: &&str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let why = if n.is_empty() {
        "is empty"
    } else if labels.len() < 2 {
        "is a short name, not a fully qualified domain name"
    } else if n.len() > 253 || !labels.iter().all(label_ok) {
        "is not a valid domain name"
    } else if labels
        .last()
        .is_some_and(|t| t.bytes().all(|b| b.is_ascii_digit()))
    {
        "is an address, not a domain name"
    } else if labels
        .iter()
        .any(|l| ["localhost", "localdomain"].contains(&l.to_ascii_lowercase().as_str()))
    {
        "names localhost, not this standby"
    } else {
        return Ok(());
    };
    Err(format!(
        "hostname `{name}` {why} (primaries refuse such names in EHLO): {HOSTNAME_FIX}"
    ))
}

fn fqdn<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    let name = name.trim().to_string();
    check_fqdn(&name).map_err(D::Error::custom)?;
    Ok(name)
}

/// The default hostname: the contents of `/etc/hostname` (`etc`), when it is a fully
/// qualified name; otherwise an error telling to set the key in `path`.
fn default_hostname(path: &Path, etc: Option<String>) -> Result<String, ConfigError> {
    let name = etc.map(|s| s.trim().to_string()).unwrap_or_default();
    let why = match check_fqdn(&name) {
        Ok(()) => return Ok(name),
        Err(_) if name.is_empty() => format!("{ETC_HOSTNAME} is empty or missing"),
        Err(_) => {
            format!("{ETC_HOSTNAME} says `{name}`, which is not a fully qualified domain name")
        }
    };
    Err(ConfigError::Invalid {
        path: path.to_path_buf(),
        message: format!(
            "hostname is not set and {why} (primaries refuse short names in EHLO): \
             {HOSTNAME_FIX} in {}",
            path.display()
        ),
    })
}

fn default_listen() -> ListenAddrs {
    ListenAddrs::one(SocketAddr::from(([127, 0, 0, 1], 2525)))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("standby-data")
}
fn default_max_message_size() -> u64 {
    40 * 1024 * 1024
}
fn default_max_recipients() -> usize {
    100
}
fn default_max_connections() -> usize {
    200
}
fn default_command_timeout() -> u64 {
    300
}
fn default_session_timeout() -> u64 {
    1800
}
fn default_min_data_rate() -> u64 {
    1024
}
fn default_max_connections_per_ip() -> usize {
    20
}
fn default_max_connection_rate() -> u32 {
    // Off, as Postfix's smtpd_client_connection_rate_limit: senders and load tools
    // (smtp-source) open one connection per message.
    0
}
fn default_min_free_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_hold_days() -> u32 {
    30
}
fn default_primary_timeout() -> u64 {
    60
}
fn default_probe_timeout() -> u64 {
    10
}
fn default_breaker_5xx() -> u32 {
    20
}
fn default_interval() -> u64 {
    30
}
fn default_up_after() -> u32 {
    3
}
fn default_down_after() -> u32 {
    2
}
/// Parallel sessions to the primary. Postfix opens up to 20 per destination by default;
/// 16 keeps the SQLite write-backs grouped while staying under it (2,000 queued 10 KB
/// messages to smtp-sink on a 2-core host, three runs each: 1,613-2,092 messages/s with
/// `STANDBY_DRAIN_CONCURRENCY=8`, 2,344-2,936 with 16).
fn default_concurrency() -> usize {
    16
}
fn default_lease() -> u64 {
    600
}
fn default_clock_skew() -> u64 {
    60
}
fn yes() -> bool {
    true
}

/// Accept the native TOML type or text that parses to it (environment values are text).
pub(crate) fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + Deserialize<'de>,
    T::Err: Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        Native(T),
        Text(String),
    }
    match Either::<T>::deserialize(d)? {
        Either::Native(v) => Ok(v),
        Either::Text(s) => s
            .trim()
            .parse()
            .map_err(|e| D::Error::custom(format!("`{s}`: {e}"))),
    }
}

/// [`lenient`] for an optional key (absent: `None`, by `#[serde(default)]`).
pub(crate) fn lenient_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + Deserialize<'de>,
    T::Err: Display,
{
    lenient(d).map(Some)
}

fn default_prefix() -> String {
    "incoming/".into()
}

/// A list of domains, as a TOML array or comma-separated text; lower-cased, no trailing dot.
/// A TOML array of strings, or comma-separated text (an environment value).
fn list_or_text<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(v) => v,
        Either::Text(s) => s.split(',').map(str::to_string).collect(),
    })
}

fn domain_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let raw = list_or_text(d)?;
    let mut out = Vec::new();
    for d in raw {
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        if d.is_empty() {
            continue;
        }
        if d.contains('@') || d.contains(char::is_whitespace) {
            return Err(D::Error::custom(format!("`{d}` is not a domain name")));
        }
        out.push(d);
    }
    if out.is_empty() {
        return Err(D::Error::custom(
            "no domains configured: list the domains this standby accepts mail for",
        ));
    }
    Ok(out)
}

/// DNS zone names (blocklists): lower case, no trailing dot, each a host name's
/// characters only (it is put in a query name).
fn zone_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let mut out = Vec::new();
    for z in list_or_text(d)? {
        let z = z.trim().trim_end_matches('.').to_ascii_lowercase();
        if z.is_empty() {
            continue;
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if z.len() > 200 || !z.split('.').all(label_ok) {
            return Err(D::Error::custom(format!(
                "`{z}` is not a DNS zone name (such as zen.spamhaus.org)"
            )));
        }
        out.push(z);
    }
    Ok(out)
}

/// Run as root, a config file found in the working directory (`./standby.toml`) must be
/// root's and writable by no one else: `sudo standby drain` in a directory another user
/// controls must not read that user's file (its `data_dir`, primary and
/// `auth_password_env` would otherwise decide where root's secrets go).
fn trusted_as_root(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            message: format!(
                "run as root, a config file in the working directory must belong to root and \
                 be writable by no one else (this one: uid {}, mode {:o}); name the file you \
                 mean with --config",
                meta.uid(),
                meta.mode() & 0o7777
            ),
        });
    }
    Ok(())
}

impl Config {
    /// Where the config file is: `explicit` (`--config`), else `from_env`
    /// (`STANDBY_CONFIG`), else the first of [`SEARCH_PATH`] that exists.
    ///
    /// # Errors
    /// `STANDBY_CONFIG` naming a file that does not exist, or no file anywhere in the
    /// search path ([`ConfigError::NotFound`] lists each place looked at).
    pub fn locate(
        explicit: Option<&Path>,
        from_env: Option<PathBuf>,
    ) -> Result<PathBuf, ConfigError> {
        Self::locate_in(explicit, from_env, SEARCH_PATH.map(PathBuf::from).to_vec())
    }

    fn locate_in(
        explicit: Option<&Path>,
        from_env: Option<PathBuf>,
        search: Vec<PathBuf>,
    ) -> Result<PathBuf, ConfigError> {
        if let Some(p) = explicit {
            return Ok(p.to_path_buf());
        }
        if let Some(p) = from_env.filter(|p| !p.as_os_str().is_empty()) {
            if p.exists() {
                return Ok(p);
            }
            return Err(ConfigError::Env {
                var: ENV_CONFIG.into(),
                message: format!("names {}, which does not exist", p.display()),
            });
        }
        match search.iter().find(|p| p.exists()) {
            Some(p) if p.is_relative() => trusted_as_root(p).map(|()| p.clone()),
            Some(p) => Ok(p.clone()),
            None => Err(ConfigError::NotFound { looked: search }),
        }
    }

    /// Load `path` and apply `STANDBY_*` overrides from the process environment.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or variable, the key and the problem.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_parts(path, &text, std::env::vars())
    }

    /// The drain function's configuration: only environment variables (the same names
    /// as everywhere), on top of [`LAMBDA_DEFAULTS`].
    pub fn from_lambda_env(
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Self::lambda(env, LAMBDA_DEFAULTS)
    }

    /// The ingest function's configuration: its environment, where no primary is needed.
    pub fn from_ingest_env(
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Self::lambda(env, INGEST_DEFAULTS)
    }

    fn lambda(
        env: impl IntoIterator<Item = (String, String)>,
        defaults: &str,
    ) -> Result<Config, ConfigError> {
        // Empty means unset: a template cannot leave a variable out (PrimaryAuthUser = "").
        let env = env.into_iter().filter(|(_, v)| !v.is_empty());
        Self::from_parts(Path::new("(Lambda environment)"), defaults, env)
    }

    /// Every config variable, derived from the structs.
    pub fn env_names() -> &'static EnvNames {
        &NAMES
    }

    /// Parse `text` (read from `path`) with the given environment: each `STANDBY_*`
    /// variable sets its key; `STANDBY_CONFIG`, `STANDBY_LOG` and the variables a `*_env`
    /// key names are not keys; any other `STANDBY_*` variable is an error.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with the file's line for a mistake in the file,
    /// [`ConfigError::Env`] naming the variable for one in the environment.
    pub fn from_parts(
        path: &Path,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let file: toml::Table = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        // Variables that are not keys: ours, and those `*_env` keys name (in the
        // environment or the file).
        let mut exempt: HashSet<&str> = HashSet::from([ENV_CONFIG, ENV_LOG]);
        for (var, key_path) in NAMES.env_keys() {
            let named = env
                .iter()
                .find(|(k, _)| k == var)
                .map(|(_, v)| v.as_str())
                .or_else(|| lookup(&file, key_path).and_then(toml::Value::as_str));
            exempt.extend(named);
        }
        let mut overrides: Vec<(&str, &[&str], &str)> = Vec::new();
        for (var, value) in &env {
            if exempt.contains(var.as_str()) {
                continue;
            }
            let Some(key_path) = NAMES.path(var) else {
                return Err(unknown_variable(var));
            };
            overrides.push((var, key_path, value));
        }
        let merged = |skip: Option<usize>| -> Result<Config, ConfigError> {
            let mut table = file.clone();
            for (i, (_, key_path, value)) in overrides.iter().enumerate() {
                if Some(i) != skip {
                    set(&mut table, key_path, value).map_err(invalid)?;
                }
            }
            Config::deserialize(toml::Value::Table(table)).map_err(|e| invalid(e.to_string()))
        };
        let config: Config = if overrides.is_empty() {
            // Straight from the text, so errors carry line and column.
            toml::from_str(text).map_err(|e| invalid(e.to_string()))?
        } else {
            match merged(None) {
                Ok(c) => c,
                Err(ConfigError::Invalid { message, .. }) => {
                    let message = message.trim().to_string();
                    // Whose mistake? A variable whose removal mends it; else the file's,
                    // with its line.
                    let culprit = (0..overrides.len()).find(|&i| merged(Some(i)).is_ok());
                    if culprit.is_none() {
                        toml::from_str::<Config>(text).map_err(|e| invalid(e.to_string()))?;
                    }
                    let var = match culprit {
                        Some(i) => overrides[i].0.to_string(),
                        None => overrides.iter().map(|o| o.0).collect::<Vec<_>>().join(", "),
                    };
                    return Err(ConfigError::Env { var, message });
                }
                Err(e) => return Err(e),
            }
        };
        let mut config = config;
        if config.hostname.is_empty() {
            let etc = std::fs::read_to_string(ETC_HOSTNAME).ok();
            config.hostname = default_hostname(path, etc)?;
        }
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        match self.backend {
            BackendKind::Local if self.domains.is_empty() => {
                return Err(invalid(
                    "no domains configured: list the domains this standby accepts mail for".into(),
                ));
            }
            BackendKind::Aws if self.bucket.is_none() || self.table.is_none() => {
                return Err(invalid(
                    "backend = \"aws\" needs `bucket` and `table` (STANDBY_BUCKET, STANDBY_TABLE)"
                        .into(),
                ));
            }
            _ => {}
        }
        if self.prefix.starts_with(SERVE_PREFIX) {
            return Err(invalid(format!(
                "prefix `{}` is inside `{SERVE_PREFIX}`, where `standby serve` stores the mail it \
                 receives itself: give the receipt rule's S3 action another prefix (incoming/)",
                self.prefix
            )));
        }
        if let Some(node) = &self.node_id
            && (node.is_empty() || node.len() > 128 || !node.chars().all(|c| c.is_ascii_graphic()))
        {
            return Err(invalid(format!(
                "node_id `{node}` must be 1 to 128 printable characters without spaces \
                 (STANDBY_NODE_ID)"
            )));
        }
        if self.max_recipients == 0 {
            return Err(invalid("max_recipients must be at least 1".into()));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections must be at least 1".into()));
        }
        if self.max_connections_per_ip == 0 {
            return Err(invalid(
                "max_connections_per_ip must be at least 1 (STANDBY_MAX_CONNECTIONS_PER_IP)".into(),
            ));
        }
        if self.session_timeout_secs == 0 {
            return Err(invalid(
                "session_timeout_secs must be at least 1 (STANDBY_SESSION_TIMEOUT_SECS)".into(),
            ));
        }
        if self.drain.concurrency == 0 {
            return Err(invalid("drain.concurrency must be at least 1".into()));
        }
        self.alerts.check(&self.continuity).map_err(invalid)?;
        let way_out = self.outbound.relay.is_some() || self.outbound.mode.is_some();
        if let Some(own) = self.alerts.email.iter().find(|a| {
            let domain = a.rsplit_once('@').map_or("", |(_, d)| d);
            self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
        }) {
            return Err(invalid(format!(
                "[alerts] email `{own}` is in a domain this standby holds mail for: during an \
                 outage it would not arrive; give an address elsewhere"
            )));
        }
        if !self.alerts.email.is_empty() && !way_out {
            return Err(invalid(
                "[alerts] email needs a way out that is not the primary: [outbound] relay or \
                 mode (STANDBY_OUTBOUND_MODE)"
                    .into(),
            ));
        }
        if self.drain.ramp_start_per_sec == Some(0) || self.drain.ramp_step_secs == 0 {
            return Err(invalid(
                "[drain] ramp_start_per_sec and ramp_step_secs must be at least 1 (leave \
                 ramp_start_per_sec unset for no ramp)"
                    .into(),
            ));
        }
        if let Some(start) = self.drain.ramp_start_per_sec
            && self.drain.rate_per_sec != 0
            && start >= self.drain.rate_per_sec
        {
            return Err(invalid(format!(
                "[drain] ramp_start_per_sec ({start}) must be below rate_per_sec ({}), where \
                 the ramp ends",
                self.drain.rate_per_sec
            )));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(invalid(
                "tls.cert and tls.key must be set together (or neither)".into(),
            ));
        }
        if self.primary.auth_user.is_some() != self.primary.auth_password_env.is_some() {
            return Err(invalid(
                "primary.auth_user and primary.auth_password_env must be set together".into(),
            ));
        }
        if self.primary.auth_user.is_some()
            && self.primary.tls == TlsMode::None
            && !self.primary.allow_plaintext_auth
        {
            return Err(invalid(
                "primary.auth_user with primary.tls = \"none\" would send the password in the \
                 clear: use tls = \"required\", or set primary.allow_plaintext_auth = true"
                    .into(),
            ));
        }
        if let Some(name) = &self.primary.tls_server_name
            && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            return Err(invalid(format!(
                "primary.tls_server_name `{name}` is not a DNS name or IP address \
                 (STANDBY_PRIMARY_TLS_SERVER_NAME)"
            )));
        }
        if self.primary.address.trim().is_empty() {
            return Err(invalid(
                "primary.address is empty (STANDBY_PRIMARY_ADDRESS)".into(),
            ));
        }
        self.validate_sending().map_err(invalid)?;
        self.validate_arc().map_err(invalid)?;
        self.validate_mail_access().map_err(invalid)
    }

    /// `[imap]` and `[pop3]`: a certificate for the TLS listeners, the users, a store
    /// that keeps mailboxes.
    fn validate_mail_access(&self) -> Result<(), String> {
        for (name, listen, listen_tls) in [
            ("imap", &self.imap.listen, &self.imap.listen_tls),
            ("pop3", &self.pop3.listen, &self.pop3.listen_tls),
        ] {
            if listen.is_none() && listen_tls.is_none() {
                continue;
            }
            if listen_tls.is_some() && self.tls.cert.is_none() {
                return Err(format!(
                    "[{name}] listen_tls needs a certificate: set [tls] cert and key"
                ));
            }
            if self.users.file.is_none() && self.backend == BackendKind::Local {
                return Err(format!(
                    "[{name}] needs its users: set [users] file = \"users.passwd\" (a \
                     Dovecot passwd-file; `standby user add` writes it)"
                ));
            }
        }
        Ok(())
    }

    /// `[arc]`: all three keys or none, a domain name and a selector.
    fn validate_arc(&self) -> Result<(), String> {
        let a = &self.arc;
        match (&a.domain, &a.selector, &a.key) {
            (None, None, None) => Ok(()),
            (Some(d), Some(s), Some(_)) => {
                let name = |x: &str| {
                    !x.is_empty()
                        && x.split('.').all(|l| {
                            !l.is_empty()
                                && l.len() <= 63
                                && l.bytes()
                                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                        })
                };
                if !name(d) || !d.contains('.') {
                    return Err(format!("[arc] domain `{d}` is not a domain name"));
                }
                if !name(s) {
                    return Err(format!(
                        "[arc] selector `{s}` is not a DNS name (letters, digits, `-`, `_`, dots)"
                    ));
                }
                Ok(())
            }
            _ => Err("[arc] domain, selector and key must be set together".into()),
        }
    }

    /// `[submission]` and `[outbound]`: what sending needs is there.
    fn validate_sending(&self) -> Result<(), String> {
        let s = &self.submission;
        if s.listen_tls.is_some() && self.tls.cert.is_none() {
            return Err(
                "[submission] listen_tls needs a certificate: set [tls] cert and key".into(),
            );
        }
        if (s.listen.is_some() || s.listen_tls.is_some())
            && self.users.file.is_none()
            && self.backend == BackendKind::Local
        {
            return Err(
                "[submission] needs its users: set [users] file = \"users.passwd\" (a \
                        Dovecot passwd-file; `standby user add` writes it)"
                    .into(),
            );
        }
        let o = &self.outbound;
        if self.outbound_mode() == OutboundMode::Relay && o.relay.is_none() {
            return Err(
                "[outbound] mode = \"relay\" needs relay = \"host:port\" (STANDBY_OUTBOUND_RELAY)"
                    .into(),
            );
        }
        if o.relay_user.is_some() != o.relay_password_env.is_some() {
            return Err("[outbound] relay_user and relay_password_env must be set together".into());
        }
        if o.dkim_selector.is_some() != o.dkim_key.is_some() {
            return Err("[outbound] dkim_selector and dkim_key must be set together".into());
        }
        if let Some(t) = &o.sent_copy
            && (!t.contains('@') || t.contains(char::is_whitespace))
        {
            return Err(format!(
                "[outbound] sent_copy `{t}` is not an address template like \"{{local}}+sent@{{domain}}\""
            ));
        }
        Ok(())
    }

    /// `[outbound] mode`, or its default: `ses` on the AWS backend, `relay` when a
    /// relay is set, else `direct`.
    pub fn outbound_mode(&self) -> OutboundMode {
        let o = &self.outbound;
        o.mode.unwrap_or(match (self.backend, &o.relay) {
            (BackendKind::Aws, _) => OutboundMode::Ses,
            (_, Some(_)) => OutboundMode::Relay,
            _ => OutboundMode::Direct,
        })
    }

    /// Where the messages are, for `status`: the spool directory, or the bucket's
    /// receipt-rule prefix and the table.
    pub fn store_description(&self) -> String {
        match self.aws_settings() {
            Some(a) => format!(
                "s3://{}/{} + dynamodb table {}",
                a.bucket, a.prefix, a.table
            ),
            None => self.data_dir().display().to_string(),
        }
    }

    /// The authserv-id of the `Authentication-Results:` fields the standby adds.
    pub fn authserv_id(&self) -> &str {
        self.authserv_id.as_deref().unwrap_or(&self.hostname)
    }

    /// The authserv-ids whose fields are removed: [`Config::authserv_id`], and
    /// `hostname` where it differs (a field under this node's own name is as forged).
    pub fn authserv_ids(&self) -> Vec<String> {
        let mut ids = vec![self.authserv_id().to_string()];
        if !self.hostname.eq_ignore_ascii_case(self.authserv_id()) {
            ids.push(self.hostname.clone());
        }
        ids
    }

    /// This node's name (`node_id`): set, or the machine's host name, else `hostname`.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| self.hostname.clone())
        })
    }

    /// Where the spool lives: relative `data_dir` is taken from the working directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where the AWS backend's data is, when `backend = "aws"`.
    pub fn aws_settings(&self) -> Option<AwsSettings> {
        match (self.backend, &self.bucket, &self.table) {
            (BackendKind::Aws, Some(bucket), Some(table)) => Some(AwsSettings {
                bucket: bucket.clone(),
                table: table.clone(),
                prefix: self.prefix.clone(),
                region: self.region.clone(),
                endpoint_url: self.endpoint_url.clone(),
                keep_delivered_days: self.keep_delivered_days,
                archive: self.archive(),
            }),
            _ => None,
        }
    }

    /// `primary.address` with the default port added.
    pub fn primary_addr(&self) -> String {
        let a = self.primary.address.trim();
        if a.rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            a.to_string()
        } else {
            format!("{a}:25")
        }
    }

    /// The recipients file as a set of lower-cased addresses, if configured.
    pub fn load_recipients(&self) -> Result<Option<HashSet<String>>, ConfigError> {
        let Some(path) = &self.recipients else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        parse_recipients(path, &text).map(Some)
    }
}

/// The value at `key_path` in `table`.
fn lookup<'t>(table: &'t toml::Table, key_path: &[&str]) -> Option<&'t toml::Value> {
    let (last, sections) = key_path.split_last()?;
    let mut t = table;
    for s in sections {
        t = t.get(*s)?.as_table()?;
    }
    t.get(*last)
}

/// Set the key at `key_path` to the text `value`, creating its sections.
fn set(table: &mut toml::Table, key_path: &[&str], value: &str) -> Result<(), String> {
    let Some((last, sections)) = key_path.split_last() else {
        return Ok(());
    };
    let mut t = table;
    for s in sections {
        t = t
            .entry(*s)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("`{s}` must be a table ([{s}])"))?;
    }
    t.insert((*last).to_string(), toml::Value::String(value.to_string()));
    Ok(())
}

/// A `STANDBY_*` variable that is no setting: named, with the closest setting.
fn unknown_variable(var: &str) -> ConfigError {
    let hint = match (NAMES.closest(var), NAMES.section_of(var)) {
        (Some(near), _) => format!("did you mean {near}?"),
        (None, Some((section, names))) => {
            format!("the [{section}] settings are {}", names.join(", "))
        }
        (None, None) => "settings are STANDBY_ and the key's path in capitals, like \
                         STANDBY_PRIMARY_ADDRESS for [primary] address"
            .to_string(),
    };
    ConfigError::Env {
        var: var.to_string(),
        message: format!(
            "not a setting: {hint} (besides settings, only {ENV_CONFIG}, {ENV_LOG} and the \
             variable a *_env key names may start with {ENV_PREFIX})"
        ),
    }
}

/// Parse a recipients file: one address per line, `#` comments, blank lines ignored.
pub fn parse_recipients(path: &Path, text: &str) -> Result<HashSet<String>, ConfigError> {
    let mut set = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        // RFC 5321 form, as the listener reads addresses: `"john doe"@example.test`.
        let Ok(addr) = crate::model::Address::parse(line) else {
            return Err(ConfigError::Recipients {
                path: path.to_path_buf(),
                line: n + 1,
                message: format!(
                    "`{line}` is not an address like user@example.com (quote a local part \
                     with spaces: \"john doe\"@example.com)"
                ),
            });
        };
        set.insert(addr.decoded().to_lowercase());
    }
    if set.is_empty() {
        // Empty or truncated (a half-written copy, a failed export from the primary):
        // every recipient would get 550 5.1.1 and senders would bounce mail we should hold.
        return Err(ConfigError::Recipients {
            path: path.to_path_buf(),
            line: text.lines().count().max(1),
            message: "lists no address: every recipient would be refused; remove the \
                      `recipients` key to accept every address of your domains"
                .into(),
        });
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_reads_only_roots_config_from_the_working_directory() {
        use std::os::unix::fs::PermissionsExt;
        assert!(
            nix::unistd::geteuid().is_root(),
            "run the tests as root (scripts/test does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("standby.toml");
        std::fs::write(&f, "").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        trusted_as_root(&f).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o664)).unwrap();
        let e = trusted_as_root(&f).unwrap_err().to_string();
        assert!(e.contains("--config") && e.contains("664"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::chown(&f, Some(65534), None).unwrap();
        let e = trusted_as_root(&f).unwrap_err().to_string();
        assert!(e.contains("uid 65534"), "{e}");
    }

    const MIN: &str = "domains = [\"Example.TEST.\"]\nhostname = \"standby.example.test\"\n\
                       [primary]\naddress = \"127.0.0.1\"\n";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn parts(text: &str, vars: &[(&str, &str)]) -> Result<Config, String> {
        Config::from_parts(Path::new("conf/s.toml"), text, env(vars)).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_normalisation() {
        let c = Config::from_parts(Path::new("t.toml"), MIN, env(&[])).unwrap();
        assert_eq!(c.domains, vec!["example.test"]);
        assert_eq!(c.max_message_size, 40 * 1024 * 1024);
        assert_eq!(c.max_recipients, 100);
        assert_eq!(c.primary_addr(), "127.0.0.1:25");
        assert_eq!(c.primary.tls, TlsMode::Opportunistic);
        assert_eq!(c.health.up_after, 3);
        assert_eq!(c.listen.to_string(), "127.0.0.1:2525");
        assert_eq!(c.metrics.stack, None);
    }

    /// A ramp that cannot ramp is a config error naming the keys, not a silent guess.
    #[test]
    fn a_ramp_must_start_below_its_cap_and_take_steps() {
        let ramp = |vars: &[(&str, &str)]| Config::from_parts(Path::new("t.toml"), MIN, env(vars));
        let ok = ramp(&[
            ("STANDBY_DRAIN_RATE_PER_SEC", "50"),
            ("STANDBY_DRAIN_RAMP_START_PER_SEC", "5"),
        ])
        .unwrap();
        assert_eq!(ok.drain.ramp_start_per_sec, Some(5));
        assert_eq!(ok.drain.ramp_step_secs, 60);
        for bad in [
            &[("STANDBY_DRAIN_RAMP_START_PER_SEC", "0")][..],
            &[
                ("STANDBY_DRAIN_RAMP_START_PER_SEC", "5"),
                ("STANDBY_DRAIN_RAMP_STEP_SECS", "0"),
            ],
            &[
                ("STANDBY_DRAIN_RATE_PER_SEC", "5"),
                ("STANDBY_DRAIN_RAMP_START_PER_SEC", "5"),
            ],
        ] {
            let e = ramp(bad).unwrap_err().to_string();
            assert!(e.contains("ramp_start_per_sec"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn env_overrides_keys_and_sections() {
        let c = Config::from_parts(
            Path::new("t.toml"),
            MIN,
            env(&[
                ("STANDBY_LISTEN", "127.0.0.1:2600, [::1]:2600"),
                ("STANDBY_PRIMARY_ADDRESS", "10.0.0.1:587"),
                ("STANDBY_PRIMARY_TLS", "required"),
                ("STANDBY_HEALTH_UP_AFTER", "5"),
                ("STANDBY_DOMAINS", "a.test, b.test"),
                ("STANDBY_METRICS_STACK", "standby-prod"),
                ("STANDBY_CONFIG", "ignored.toml"),
                ("STANDBY_LOG", "debug"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:2600, [::1]:2600");
        assert_eq!(c.primary_addr(), "10.0.0.1:587");
        assert_eq!(c.primary.tls, TlsMode::Required);
        assert_eq!(c.health.up_after, 5);
        assert_eq!(c.domains, vec!["a.test", "b.test"]);
        assert_eq!(c.metrics.stack.as_deref(), Some("standby-prod"));
    }

    #[test]
    fn errors_name_file_key_and_variable() {
        let bad = format!("{MIN}max_mesage_size = 5\n");
        let e = parts(&bad, &[]).unwrap_err();
        assert!(
            e.contains("conf/s.toml") && e.contains("max_mesage_size"),
            "{e}"
        );
        assert!(e.contains("line 5"), "{e}");

        let bad_tls = MIN.replace("127.0.0.1\"", "127.0.0.1\"\ntls = \"sometimes\"");
        let e = parts(&bad_tls, &[]).unwrap_err();
        assert!(e.contains("sometimes") && e.contains("tls"), "{e}");
        // A mistake in the file points at its line even when variables are set too.
        let e = parts(&bad_tls, &[("STANDBY_HEALTH_UP_AFTER", "5")]).unwrap_err();
        assert!(e.contains("conf/s.toml") && e.contains("line 5"), "{e}");

        let e = parts(MIN, &[("STANDBY_MAX_RECIPIENTS", "lots")]).unwrap_err();
        assert!(
            e.contains("STANDBY_MAX_RECIPIENTS") && e.contains("lots"),
            "{e}"
        );
        // Of several variables, the one at fault is named, alone.
        let e = parts(
            MIN,
            &[
                ("STANDBY_HEALTH_UP_AFTER", "5"),
                ("STANDBY_PRIMARY_TLS", "sometimes"),
                ("STANDBY_DRAIN_CONCURRENCY", "2"),
            ],
        )
        .unwrap_err();
        assert!(
            e.starts_with("environment variable STANDBY_PRIMARY_TLS:") && e.contains("sometimes"),
            "{e}"
        );
        // A variable may supply what the file lacks.
        let no_primary = "hostname = \"mx2.example.org\"\ndomains = [\"example.org\"]\n";
        let c = parts(no_primary, &[("STANDBY_PRIMARY_ADDRESS", "10.0.0.1")]).unwrap();
        assert_eq!(c.primary_addr(), "10.0.0.1:25");

        let e = parts("hostname = \"a.b\"\n[primary]\naddress=\"x\"", &[]).unwrap_err();
        assert!(e.contains("domains"), "{e}");
    }

    #[test]
    fn unknown_variables_are_errors_with_the_closest_name() {
        for (var, near) in [
            ("STANDBY_PRIMARY", "STANDBY_PRIMARY_ADDRESS"),
            ("STANDBY_METRICS", "STANDBY_METRICS_STACK"),
            ("STANDBY_HEALTH_UPAFTER", "STANDBY_HEALTH_UP_AFTER"),
            ("STANDBY_MAX_MESAGE_SIZE", "STANDBY_MAX_MESSAGE_SIZE"),
        ] {
            let e = parts(MIN, &[(var, "x")]).unwrap_err();
            assert!(
                e.starts_with(&format!("environment variable {var}: not a setting")),
                "{e}"
            );
            assert!(e.contains(&format!("did you mean {near}")), "{var}: {e}");
            // The same in the Lambda functions.
            let e = Config::from_lambda_env(env(&[
                ("STANDBY_BUCKET", "b"),
                ("STANDBY_TABLE", "t"),
                ("STANDBY_PRIMARY_ADDRESS", "p:587"),
                (var, "x"),
            ]))
            .unwrap_err()
            .to_string();
            assert!(e.contains(var) && e.contains(near), "{e}");
        }
        // No close name: the section's settings, or how names are made.
        let e = parts(MIN, &[("STANDBY_PRIMARY_SECRET", "x")]).unwrap_err();
        assert!(
            e.contains("the [primary] settings are STANDBY_PRIMARY_ADDRESS, STANDBY_PRIMARY_TLS"),
            "{e}"
        );
        let e = parts(MIN, &[("STANDBY_QQQQQQQQQQQQQQQQQQQQ", "x")]).unwrap_err();
        assert!(
            e.contains("STANDBY_PRIMARY_ADDRESS for [primary] address"),
            "{e}"
        );
    }

    #[test]
    fn every_name_reaches_its_key() {
        // Each derived name sets a key the structs accept: a value of the wrong kind is
        // refused for that variable (never "unknown field"), and text keys take it.
        let names = Config::env_names();
        for var in names.all() {
            let r = parts(MIN, &[(var, "\u{1}")]);
            if let Err(e) = &r {
                assert!(
                    !e.contains("unknown field") && !e.contains("expected struct"),
                    "{var}: {e}"
                );
                assert!(
                    e.contains(var) || e.contains("conf/s.toml:"),
                    "{var}: the error names neither it nor the file: {e}"
                );
            }
        }
        let c = parts(
            MIN,
            &[
                ("STANDBY_MX_HOST", "mx.example.test"),
                ("STANDBY_PRIMARY_AUTH_USER", "u"),
                ("STANDBY_PRIMARY_AUTH_PASSWORD_ENV", "PW"),
                ("STANDBY_DSN_REPORTING_MTA", "example.test"),
                ("STANDBY_TLS_CERT", "c.pem"),
                ("STANDBY_TLS_KEY", "k.pem"),
            ],
        )
        .unwrap();
        assert_eq!(c.mx_host.as_deref(), Some("mx.example.test"));
        assert_eq!(c.primary.auth_user.as_deref(), Some("u"));
        assert_eq!(c.dsn.reporting_mta.as_deref(), Some("example.test"));
        assert_eq!(c.tls.cert.as_deref(), Some(Path::new("c.pem")));
    }

    #[test]
    fn hostname_must_be_fully_qualified() {
        for ok in [
            "mx2.example.com",
            "MX2.Example.COM.",
            "a-b.c1.example",
            "xn--bcher-kva.example",
        ] {
            assert_eq!(check_fqdn(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "vm",
            "localhost",
            "localhost.localdomain",
            "mx.localhost",
            "10.0.0.1",
            "-mx.example.com",
            "mx-.example.com",
            "mx..example.com",
            "mx_2.example.com",
            "mx 2.example.com",
        ] {
            let e = check_fqdn(bad).unwrap_err();
            assert!(e.contains("mx2.example.com"), "{bad}: {e}");
        }
        // In the file: its line, and the fix.
        let text = MIN.replace("standby.example.test", "vm");
        let e = parts(&text, &[]).unwrap_err();
        assert!(
            e.contains("conf/s.toml") && e.contains("line 2") && e.contains("`vm`"),
            "{e}"
        );
        assert!(e.contains("set hostname = \"mx2.example.com\""), "{e}");
        // In the environment: the variable.
        let e = parts(MIN, &[("STANDBY_HOSTNAME", "vm")]).unwrap_err();
        assert!(
            e.starts_with("environment variable STANDBY_HOSTNAME:"),
            "{e}"
        );
    }

    #[test]
    fn the_default_hostname_must_be_fully_qualified_too() {
        let file = Path::new("/etc/standby/standby.toml");
        assert_eq!(
            default_hostname(file, Some("mx2.example.org\n".into())).unwrap(),
            "mx2.example.org"
        );
        for etc in [Some("vm\n".to_string()), Some(String::new()), None] {
            let e = default_hostname(file, etc.clone()).unwrap_err().to_string();
            assert!(
                e.contains("/etc/hostname")
                    && e.contains("set hostname = \"mx2.example.com\"")
                    && e.contains("in /etc/standby/standby.toml"),
                "{etc:?}: {e}"
            );
        }
        let e = default_hostname(file, Some("vm\n".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("says `vm`"), "{e}");
    }

    #[test]
    fn the_config_file_is_looked_up_like_other_daemons_do() {
        let dir = tempfile::tempdir().unwrap();
        let here = dir.path().join("standby.toml");
        let etc = dir.path().join("etc-standby.toml");
        let named = dir.path().join("named.toml");
        let search = || vec![here.clone(), etc.clone()];
        // Nothing anywhere: every place is named.
        let e = Config::locate_in(None, None, search())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&here.display().to_string())
                && e.contains(&etc.display().to_string())
                && e.contains("--config")
                && e.contains("STANDBY_CONFIG"),
            "{e}"
        );
        std::fs::write(&etc, "").unwrap();
        assert_eq!(Config::locate_in(None, None, search()).unwrap(), etc);
        std::fs::write(&here, "").unwrap();
        assert_eq!(Config::locate_in(None, None, search()).unwrap(), here);
        // STANDBY_CONFIG comes before the search path; a missing one is an error naming it.
        let e = Config::locate_in(None, Some(named.clone()), search())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("STANDBY_CONFIG") && e.contains("named.toml"),
            "{e}"
        );
        std::fs::write(&named, "").unwrap();
        assert_eq!(
            Config::locate_in(None, Some(named.clone()), search()).unwrap(),
            named
        );
        // --config comes first, as given (a missing file is reported when read).
        let flag = dir.path().join("flag.toml");
        assert_eq!(
            Config::locate_in(Some(&flag), Some(named), search()).unwrap(),
            flag
        );
    }

    #[test]
    fn node_id_and_the_serve_prefix() {
        let c = Config::from_parts(
            Path::new("t.toml"),
            MIN,
            env(&[("STANDBY_NODE_ID", "mx30")]),
        )
        .unwrap();
        assert_eq!(c.node_id(), "mx30");
        let c = Config::from_parts(Path::new("t.toml"), MIN, env(&[])).unwrap();
        assert!(!c.node_id().is_empty(), "the host name by default");
        let e = Config::from_parts(
            Path::new("t.toml"),
            MIN,
            env(&[("STANDBY_NODE_ID", "mx 30")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("t.toml") && e.contains("STANDBY_NODE_ID"), "{e}");
        // The receipt rule's prefix may not be where serve nodes store their mail.
        let e = Config::from_parts(
            Path::new("t.toml"),
            &format!("prefix = \"serve/\"\n{MIN}"),
            env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("serve/") && e.contains("t.toml"), "{e}");
    }

    #[test]
    fn recipients_file_errors_name_the_line() {
        let ok = parse_recipients(
            Path::new("r"),
            "# users\nAlice@Example.test\n\nbob@example.test # b\n\"John Doe\"@example.test\n",
        )
        .unwrap();
        assert!(ok.contains("alice@example.test") && ok.contains("bob@example.test"));
        // Quoted local parts are stored decoded, as the listener compares them.
        assert!(ok.contains("john doe@example.test"), "{ok:?}");
        let e = parse_recipients(Path::new("r.txt"), "# nobody yet\n\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.txt") && e.contains("no address"), "{e}");
        let e = parse_recipients(Path::new("r.txt"), "a@b.test\nnot an address\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.txt:2"), "{e}");
    }

    #[test]
    fn template_environment_with_empty_values() {
        // What infra/template.yaml sets when PrimaryAuthUser and PrimarySecretArn are empty.
        let c = Config::from_lambda_env(env(&[
            ("STANDBY_BUCKET", "mail-bucket"),
            ("STANDBY_TABLE", "standby"),
            ("STANDBY_PRIMARY_ADDRESS", "mx1.example.test:587"),
            ("STANDBY_PRIMARY_AUTH_USER", ""),
            ("STANDBY_PRIMARY_AUTH_PASSWORD_ENV", ""),
            ("STANDBY_PRIMARY_SECRET", ""),
            ("STANDBY_KEEP_DELIVERED_DAYS", "30"),
            ("STANDBY_METRICS_STACK", "standby-prod"),
        ]))
        .unwrap();
        assert_eq!(c.primary.auth_user, None, "empty means no AUTH");
        assert_eq!(c.primary.auth_password_env, None);
        assert_eq!(c.keep_delivered_days, Some(30));
        assert_eq!(c.aws_settings().unwrap().keep_delivered_days, Some(30));
        assert_eq!(c.metrics.stack.as_deref(), Some("standby-prod"));
        let bad = Config::from_lambda_env(env(&[
            ("STANDBY_BUCKET", "b"),
            ("STANDBY_TABLE", "t"),
            ("STANDBY_PRIMARY_ADDRESS", "p:587"),
            ("STANDBY_KEEP_DELIVERED_DAYS", "a month"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(bad.contains("STANDBY_KEEP_DELIVERED_DAYS"), "{bad}");
    }

    #[test]
    fn lambda_environment() {
        let c = Config::from_lambda_env(env(&[
            ("STANDBY_BUCKET", "mail-bucket"),
            ("STANDBY_TABLE", "standby"),
            ("STANDBY_PRIMARY_ADDRESS", "mx1.example.test:587"),
            ("STANDBY_PRIMARY_AUTH_USER", "standby"),
            (
                "STANDBY_PRIMARY_AUTH_PASSWORD_ENV",
                "STANDBY_PRIMARY_SECRET",
            ),
            (
                "STANDBY_PRIMARY_SECRET",
                "arn:aws:secretsmanager:us-east-1:1:secret:p",
            ),
            ("STANDBY_LOG", "debug"),
        ]))
        .unwrap();
        assert_eq!(c.backend, BackendKind::Aws);
        assert_eq!(c.hostname, "standby-drain.invalid");
        assert_eq!(c.primary_addr(), "mx1.example.test:587");
        assert_eq!(
            c.primary.tls,
            TlsMode::Required,
            "STARTTLS required by default"
        );
        assert_eq!(
            c.primary.auth_password_env.as_deref(),
            Some("STANDBY_PRIMARY_SECRET")
        );
        let s = c.aws_settings().unwrap();
        assert_eq!(
            (s.bucket.as_str(), s.table.as_str()),
            ("mail-bucket", "standby")
        );
        assert_eq!(s.prefix, "incoming/");
        assert!(c.domains.is_empty(), "SES decides which domains arrive");

        let e = Config::from_lambda_env(env(&[("STANDBY_BUCKET", "b"), ("STANDBY_TABLE", "t")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("STANDBY_PRIMARY_ADDRESS"), "{e}");
        let e = Config::from_lambda_env(env(&[("STANDBY_PRIMARY_ADDRESS", "p:587")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("STANDBY_BUCKET"), "{e}");
        // The ingest function's defaults load as they are.
        let c = Config::from_ingest_env(env(&[("STANDBY_BUCKET", "b"), ("STANDBY_TABLE", "t")]))
            .unwrap();
        assert_eq!(c.hostname, "standby-ingest.invalid");
    }

    #[test]
    fn the_password_variable_is_never_read_as_a_key() {
        let text = format!("{MIN}auth_user = \"u\"\nauth_password_env = \"STANDBY_SMTP_PASS\"\n");
        let c = parts(&text, &[("STANDBY_SMTP_PASS", "s3cret")]).unwrap();
        assert_eq!(c.primary.auth_user.as_deref(), Some("u"));
        // Named in the environment instead of the file: the same.
        let c = parts(
            MIN,
            &[
                ("STANDBY_PRIMARY_AUTH_USER", "u"),
                ("STANDBY_PRIMARY_AUTH_PASSWORD_ENV", "STANDBY_SMTP_PASS"),
                ("STANDBY_SMTP_PASS", "s3cret"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.primary.auth_password_env.as_deref(),
            Some("STANDBY_SMTP_PASS")
        );
        // A variable no key names is not exempt.
        let e = parts(&text, &[("STANDBY_OTHER_PASS", "s3cret")]).unwrap_err();
        assert!(e.contains("STANDBY_OTHER_PASS"), "{e}");
    }
}
