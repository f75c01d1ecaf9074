//! standby-mx: a standby (secondary) MX that holds mail while the primary is down and
//! hands it back when it returns.
//!
//! The domain logic (ingest, drain, health) is written once against small traits
//! ([`ports`]) and runs unchanged on every backend: files + SQLite for the embedded
//! default, S3 + DynamoDB on AWS.
//!
//! # Layout
//! Six layers; a module imports only from its own layer and those above it in this
//! list, and `tests/layout.rs` fails the build's tests when one does not:
//!
//! 1. **Model** (plain data, imports nothing else):
//!    - [`model`]: message ids, envelopes, records, per-recipient status, the primary's
//!      health record, drain reports, journal copies.
//!    - [`error`]: typed errors that say whether to retry.
//! 2. **Config** ([`config`]): TOML + `STANDBY_*` environment overrides, and the settings
//!    types every layer below reads (retention policy, journal addresses, AWS settings).
//! 3. **Ports** ([`ports`]): `BlobStore`, `Index`, `AuditLog`, `Relay`, `Probe`, `Clock`,
//!    `SenderCheck`, `Inbound` (what the listener hands messages to), `UserFiles`,
//!    `LoginLimits`, `Outbound` (how users' mail leaves), `SubmitGate` (the submission
//!    listener's logins), `EventStore` (the continuity record and one-time marks), `Http`,
//!    `Mailer`, `Sns` (alerts and notices out of band), `ArcSeal` (the seal on
//!    redelivered mail), and `Storage`, the bundle of
//!    storage ports one backend provides. Beside them, [`metrics`]: the counters and
//!    histograms any layer records, and [`paced`]: a stream whose writes a client must
//!    take at a minimum pace (both import nothing of ours).
//! 4. **Domain**: written once against the ports; imports the model, config, ports and
//!    other domain modules, never an adapter or an entry point.
//!    - [`ingest`]: accepting a message: blob first, then index; 250 only after both.
//!    - [`publish`]: received messages moved into place in batches once durable, and
//!      what a crash left unpublished checked (published or removed) at start.
//!    - [`drain`]: leases, redelivery, per-recipient outcomes, backoff, expiry.
//!    - [`dsn`]: bounces for failed mail, only to authenticated senders (no backscatter).
//!    - [`sender`]: the sender's SPF verdict, checked after the 250 in the background.
//!    - [`health`]: probing the primary with hysteresis.
//!    - [`journal`], [`replay`], [`export`], [`retention`]: recovery and retention.
//!    - [`summary`]: the listing summary parsed with `mail-parser`.
//!    - [`users`]: the emergency inbox's users (a Dovecot passwd-file, aliases), behind
//!      the `UserFiles` port; [`mailbox`]: what one user sees.
//!    - [`outbound`]: what users send during the outage (stored per part, the outbound
//!      queue, DKIM), and the ARC seal on redelivered mail; [`submission`]: the submission listener's logins and messages.
//!    - [`continuity`]: continuity events (the lifecycle, alerts, users' notices);
//!      [`status`]: the status view (`status --json`, the alerts' body, `/metrics`);
//!      [`manage`]: operator changes to a message (the CLI and the console).
//! 5. **Adapters**: implement the ports for one technology; import the model, config and
//!    ports, never a domain module.
//!    - [`backend`]: `FsBlobStore`, `SqliteIndex`, `S3BlobStore`, `DynamoIndex`, `SesOutbound`, the audit
//!      logs, in-memory twins, group commit; and the constructors of `Storage`.
//!    - [`smtp`]: the listener (session state machine, DATA decoder, TLS), feeding an
//!      `Inbound`; the client (`SmtpRelay`, the `Relay` and `Probe` adapter); the SPF
//!      check (`SpfCheck`, the `SenderCheck` adapter); `SmtpOutbound` (the `Outbound`
//!      adapter: a smarthost, or direct MX delivery).
//!    - [`dns`]: the resolvers (MX checks, SPF lookups).
//! 6. **Entry points** (wiring: build adapters, hand them to the domain):
//!    - [`serve`]: `standby serve`: listener plus the health and drain loop.
//!    - [`cli`]: the `standby` operator command; [`doctor`]: its setup checks.
//!    - [`lambda`]: the `standby-ingest`, `standby-drain` and `standby-web` handlers (AWS).
//!    - [`web`]: the emergency inbox's HTTP app (axum), hosted by `serve` and `standby-web`.
//!    - [`imap`], [`pop3`]: the emergency mailbox in users' own mail clients, hosted by
//!      `serve`.

pub mod backend;
pub mod cli;
pub mod config;
pub mod continuity;
pub mod dns;
pub mod doctor;
pub mod drain;
pub mod dsn;
pub mod error;
pub mod export;
pub mod health;
pub mod imap;
pub mod ingest;
pub mod journal;
pub mod lambda;
pub mod mailbox;
pub mod manage;
pub mod metrics;
pub mod model;
pub mod outbound;
pub mod paced;
pub mod pop3;
pub mod ports;
pub mod primary_config;
pub mod publish;
pub mod replay;
pub mod retention;
pub mod sender;
pub mod serve;
pub mod smtp;
pub mod status;
pub mod submission;
pub mod summary;
pub mod users;
pub mod web;
