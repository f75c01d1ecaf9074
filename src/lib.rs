//! standby-mx: a standby (secondary) MX that holds mail while the primary is down and
//! hands it back when it returns.
//!
//! The domain logic (ingest, drain, health) is written once against small traits
//! ([`ports`]) and runs unchanged on every backend: files + SQLite for the embedded
//! default, S3 + DynamoDB on AWS.
//!
//! # Layout
//! - [`model`]: message ids, records, per-recipient status.
//! - [`ports`]: `BlobStore`, `Index`, `Relay`, `Probe`, `Clock`, `SenderCheck`.
//! - [`backend`]: adapters (`FsBlobStore`, `SqliteIndex`, in-memory twins) and group commit.
//! - [`ingest`]: accepting a message: blob first, then index; 250 only after both.
//! - [`drain`]: leases, redelivery, per-recipient outcomes, backoff, expiry.
//! - [`dsn`]: bounces for failed mail, only to authenticated senders (no backscatter).
//! - [`dns`]: the resolvers (MX checks, SPF at receipt).
//! - [`health`]: probing the primary with hysteresis.
//! - [`smtp`]: the listener (session state machine, DATA decoder, TLS) and the client.
//! - [`summary`]: the listing summary parsed with `mail-parser`.
//! - [`config`]: TOML + `STANDBY_*` environment overrides.
//! - [`serve`]: `standby serve`: listener plus the health and drain loop.
//! - [`cli`]: the `standby` operator command.
//! - [`lambda`]: the `standby-ingest` and `standby-drain` handlers (AWS).

pub mod backend;
pub mod cli;
pub mod config;
pub mod dns;
pub mod doctor;
pub mod drain;
pub mod dsn;
pub mod error;
pub mod export;
pub mod health;
pub mod ingest;
pub mod journal;
pub mod lambda;
pub mod model;
pub mod ports;
pub mod replay;
pub mod retention;
pub mod serve;
pub mod smtp;
pub mod summary;
