//! SMTP in both directions.
//!
//! - [`session`]: the server-side state machine (sans-IO), policy and replies.
//! - [`data`]: the DATA decoder (end of data, dot-stuffing, smuggling defence).
//! - [`server`]: the tokio listener that drives sessions over sockets.
//! - [`client`]: `SmtpRelay`, delivery to and probing of the primary.
//! - [`outbound`]: `SmtpOutbound`, users' mail to outside recipients via a smarthost.
//! - [`tls`]: rustls configuration for both.
//! - [`auth`]: SASL PLAIN and LOGIN for the submission listener.
//! - [`spf`]: the sender's SPF lookup (the `SenderCheck` adapter; for bounces only).

pub mod auth;
pub mod client;
pub mod data;
pub mod dnsbl;
pub mod outbound;
pub mod rspamd;
pub mod server;
pub mod session;
pub mod spf;
pub mod tls;

pub use client::SmtpRelay;
