//! Configuration: one TOML file, every key overridable by a `STANDBY_` environment variable.
//!
//! `STANDBY_LISTEN` sets `listen`, `STANDBY_PRIMARY_ADDRESS` sets `[primary] address`: the
//! variable is the key path in upper case joined by `_`. Environment values are text, so
//! numeric and list keys also accept text (`STANDBY_DOMAINS=a.test,b.test`).
//!
//! Errors name the file (or the variable), the key and what is wrong; unknown keys are
//! errors, because a misspelt `max_mesage_size` silently ignored is a limit not enforced.

use std::collections::HashSet;
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::error::ConfigError;

/// Prefix of every environment variable that overrides a key.
pub const ENV_PREFIX: &str = "STANDBY_";
/// Variable naming the config file (same as `--config`).
pub const ENV_CONFIG: &str = "STANDBY_CONFIG";
/// Variable holding the tracing filter (`info`, `standby=debug`, ...).
pub const ENV_LOG: &str = "STANDBY_LOG";
/// Default config file, in the working directory.
pub const DEFAULT_CONFIG: &str = "standby.toml";

/// Conventional variable for the primary's password or its Secrets Manager ARN.
pub const ENV_PRIMARY_SECRET: &str = "STANDBY_PRIMARY_SECRET";

/// The drain function's metrics dimension (the stack name); unset: no metrics.
pub const ENV_METRICS: &str = "STANDBY_METRICS";

/// `STANDBY_*` variables that are not config keys.
const NOT_KEYS: &[&str] = &[ENV_CONFIG, ENV_LOG, ENV_PRIMARY_SECRET, ENV_METRICS];

/// What the Lambda functions assume before their environment is applied: the AWS
/// backend, and STARTTLS required towards the primary (it is reached over the internet).
const LAMBDA_DEFAULTS: &str = "backend = \"aws\"\nhostname = \"standby-drain.invalid\"\n\
[primary]\naddress = \"\"\ntls = \"required\"\n";
/// The ingest function never talks to the primary; it reads only the storage, journal
/// and retention keys. `.invalid` (RFC 2606) stands in for the primary it has none of.
const INGEST_DEFAULTS: &str = "backend = \"aws\"\nhostname = \"standby-ingest.invalid\"\n\
[primary]\naddress = \"no-primary.invalid\"\n";
/// Sections of the file; a variable `STANDBY_<SECTION>_<KEY>` sets `[section] key`.
const SECTIONS: &[&str] = &[
    "primary",
    "health",
    "drain",
    "tls",
    "dsn",
    "journal",
    "retention",
];

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name in our banner, EHLO and `Received:` header.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    #[serde(default = "default_listen", deserialize_with = "lenient")]
    pub listen: SocketAddr,
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
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// S3 bucket with Object Lock enabled where journal copies are archived with a
    /// per-object retention of `[retention] journal_days` (`backend = "aws"`). Unset: no
    /// archive copy.
    #[serde(default)]
    pub archive_bucket: Option<String>,
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
    /// Seconds to wait for a client command (RFC 5321 §4.5.3.2 says 5 minutes).
    #[serde(default = "default_command_timeout", deserialize_with = "lenient")]
    pub command_timeout_secs: u64,
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
}

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
    /// Seconds to wait for any reply of the primary.
    #[serde(default = "default_primary_timeout", deserialize_with = "lenient")]
    pub timeout_secs: u64,
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
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_secs: default_interval(),
            up_after: default_up_after(),
            down_after: default_down_after(),
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
    /// How long a claim on a message lasts; a crashed worker's messages return after it.
    #[serde(default = "default_lease", deserialize_with = "lenient")]
    pub lease_secs: u64,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            concurrency: default_concurrency(),
            rate_per_sec: 0,
            lease_secs: default_lease(),
        }
    }
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
    /// Check the sender's SPF at receipt (`standby serve`): without a pass (or a DMARC pass
    /// from SES on AWS) no DSN is ever sent.
    #[serde(default = "yes", deserialize_with = "lenient")]
    pub spf: bool,
    /// DNS server for the SPF lookups, `IP:port`; the system's resolvers when unset.
    #[serde(default, deserialize_with = "lenient_opt")]
    pub nameserver: Option<SocketAddr>,
    /// Seconds the 250 after DATA may wait for an unfinished SPF check; then `TEMPERROR`.
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

fn default_hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 2525))
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
fn default_hold_days() -> u32 {
    30
}
fn default_primary_timeout() -> u64 {
    60
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
fn default_concurrency() -> usize {
    8
}
fn default_lease() -> u64 {
    600
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

impl Config {
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

    /// The drain function's configuration: only environment variables, on top of
    /// [`LAMBDA_DEFAULTS`]. `STANDBY_PRIMARY` (host:port) is the primary's address;
    /// `STANDBY_PRIMARY_AUTH_USER` turns on AUTH with the password (or secret ARN) in
    /// `STANDBY_PRIMARY_SECRET`.
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
        let mut vars: Vec<(String, String)> = Vec::new();
        let mut auth = false;
        let mut secret_env_set = false;
        // Empty means unset: a template cannot leave a variable out (PrimaryAuthUser = "").
        for (k, v) in env.into_iter().filter(|(_, v)| !v.is_empty()) {
            match k.as_str() {
                "STANDBY_PRIMARY" => vars.push(("STANDBY_PRIMARY_ADDRESS".into(), v)),
                _ => {
                    auth |= k == "STANDBY_PRIMARY_AUTH_USER";
                    secret_env_set |= k == "STANDBY_PRIMARY_AUTH_PASSWORD_ENV";
                    vars.push((k, v));
                }
            }
        }
        if auth && !secret_env_set {
            vars.push((
                "STANDBY_PRIMARY_AUTH_PASSWORD_ENV".into(),
                ENV_PRIMARY_SECRET.into(),
            ));
        }
        Self::from_parts(Path::new("(Lambda environment)"), defaults, vars)
    }

    /// Parse `text` (read from `path`) with the given environment.
    pub fn from_parts(
        path: &Path,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let secret_var = table
            .get("primary")
            .and_then(|p| p.get("auth_password_env"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let mut overridden = Vec::new();
        for (var, value) in env {
            if secret_var.as_deref() == Some(var.as_str()) {
                continue;
            }
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if NOT_KEYS.contains(&var.as_str()) || rest.is_empty() {
                continue;
            }
            let key = rest.to_ascii_lowercase();
            let (section, field) = match SECTIONS
                .iter()
                .find_map(|s| key.strip_prefix(&format!("{s}_")).map(|f| (Some(*s), f)))
            {
                Some((s, f)) => (s, f.to_string()),
                None => (None, key.clone()),
            };
            let target = match section {
                Some(s) => table
                    .entry(s)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .ok_or_else(|| invalid(format!("`{s}` must be a table ([{s}])")))?,
                None => &mut table,
            };
            target.insert(field, toml::Value::String(value));
            overridden.push(var);
        }
        let config: Config = if overridden.is_empty() {
            // Straight from the text, so errors carry line and column.
            toml::from_str(text).map_err(|e| invalid(e.to_string()))?
        } else {
            // Check the file alone first so its own mistakes point at its lines.
            toml::from_str::<Config>(text).map_err(|e| invalid(e.to_string()))?;
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Env {
                var: overridden.join(", "),
                message: e.to_string(),
            })?
        };
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
        if self.max_recipients == 0 {
            return Err(invalid("max_recipients must be at least 1".into()));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections must be at least 1".into()));
        }
        if self.drain.concurrency == 0 {
            return Err(invalid("drain.concurrency must be at least 1".into()));
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
        if self.primary.address.trim().is_empty() {
            return Err(invalid(
                "primary.address is empty (STANDBY_PRIMARY_ADDRESS; STANDBY_PRIMARY in Lambda)"
                    .into(),
            ));
        }
        Ok(())
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

/// Parse a recipients file: one address per line, `#` comments, blank lines ignored.
pub fn parse_recipients(path: &Path, text: &str) -> Result<HashSet<String>, ConfigError> {
    let mut set = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let valid = line
            .rsplit_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !line.contains(' '));
        if !valid {
            return Err(ConfigError::Recipients {
                path: path.to_path_buf(),
                line: n + 1,
                message: format!("`{line}` is not an address like user@example.com"),
            });
        }
        set.insert(line.to_ascii_lowercase());
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "domains = [\"Example.TEST.\"]\n[primary]\naddress = \"127.0.0.1\"\n";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
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
    }

    #[test]
    fn env_overrides_keys_and_sections() {
        let c = Config::from_parts(
            Path::new("t.toml"),
            MIN,
            env(&[
                ("STANDBY_LISTEN", "127.0.0.1:2600"),
                ("STANDBY_PRIMARY_ADDRESS", "10.0.0.1:587"),
                ("STANDBY_PRIMARY_TLS", "required"),
                ("STANDBY_HEALTH_UP_AFTER", "5"),
                ("STANDBY_DOMAINS", "a.test, b.test"),
                ("STANDBY_CONFIG", "ignored.toml"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 2600);
        assert_eq!(c.primary_addr(), "10.0.0.1:587");
        assert_eq!(c.primary.tls, TlsMode::Required);
        assert_eq!(c.health.up_after, 5);
        assert_eq!(c.domains, vec!["a.test", "b.test"]);
    }

    #[test]
    fn errors_name_file_key_and_variable() {
        let bad = format!("{MIN}max_mesage_size = 5\n");
        let e = Config::from_parts(Path::new("conf/s.toml"), &bad, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("conf/s.toml") && e.contains("max_mesage_size"),
            "{e}"
        );
        assert!(e.contains("line 4"), "{e}");

        let bad_tls = MIN.replace("127.0.0.1\"", "127.0.0.1\"\ntls = \"sometimes\"");
        let e = Config::from_parts(Path::new("s.toml"), &bad_tls, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sometimes") && e.contains("tls"), "{e}");

        let e = Config::from_parts(
            Path::new("s.toml"),
            MIN,
            env(&[("STANDBY_MAX_RECIPIENTS", "lots")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("STANDBY_MAX_RECIPIENTS") && e.contains("lots"),
            "{e}"
        );

        let e = Config::from_parts(Path::new("s.toml"), "[primary]\naddress=\"x\"", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("domains"), "{e}");
    }

    #[test]
    fn recipients_file_errors_name_the_line() {
        let ok = parse_recipients(
            Path::new("r"),
            "# users\nAlice@Example.test\n\nbob@example.test # b\n",
        )
        .unwrap();
        assert!(ok.contains("alice@example.test") && ok.contains("bob@example.test"));
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
            ("STANDBY_PRIMARY", "mx1.example.test:587"),
            ("STANDBY_PRIMARY_AUTH_USER", ""),
            ("STANDBY_PRIMARY_SECRET", ""),
            ("STANDBY_KEEP_DELIVERED_DAYS", "30"),
            ("STANDBY_METRICS", "standby-prod"),
        ]))
        .unwrap();
        assert_eq!(c.primary.auth_user, None, "empty means no AUTH");
        assert_eq!(c.primary.auth_password_env, None);
        assert_eq!(c.keep_delivered_days, Some(30));
        assert_eq!(c.aws_settings().unwrap().keep_delivered_days, Some(30));
        let bad = Config::from_lambda_env(env(&[
            ("STANDBY_BUCKET", "b"),
            ("STANDBY_TABLE", "t"),
            ("STANDBY_PRIMARY", "p:587"),
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
            ("STANDBY_PRIMARY", "mx1.example.test:587"),
            ("STANDBY_PRIMARY_AUTH_USER", "standby"),
            (
                "STANDBY_PRIMARY_SECRET",
                "arn:aws:secretsmanager:us-east-1:1:secret:p",
            ),
            ("STANDBY_LOG", "debug"),
        ]))
        .unwrap();
        assert_eq!(c.backend, BackendKind::Aws);
        assert_eq!(c.primary_addr(), "mx1.example.test:587");
        assert_eq!(
            c.primary.tls,
            TlsMode::Required,
            "STARTTLS required by default"
        );
        assert_eq!(
            c.primary.auth_password_env.as_deref(),
            Some(ENV_PRIMARY_SECRET)
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
        assert!(e.contains("STANDBY_PRIMARY"), "{e}");
        let e = Config::from_lambda_env(env(&[("STANDBY_PRIMARY", "p:587")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("STANDBY_BUCKET"), "{e}");
    }

    #[test]
    fn the_password_variable_is_never_read_as_a_key() {
        let text = format!("{MIN}auth_user = \"u\"\nauth_password_env = \"STANDBY_SMTP_PASS\"\n");
        let c = Config::from_parts(
            Path::new("t.toml"),
            &text,
            env(&[
                ("STANDBY_SMTP_PASS", "s3cret"),
                ("STANDBY_PRIMARY_SECRET", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.primary.auth_user.as_deref(), Some("u"));
    }
}
