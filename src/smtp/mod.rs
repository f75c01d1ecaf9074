//! SMTP in both directions.
//!
//! - [`session`]: the server-side state machine (sans-IO), policy and replies.
//! - [`data`]: the DATA decoder (end of data, dot-stuffing, smuggling defence).
//! - [`server`]: the tokio listener that drives sessions over sockets.
//! - [`client`]: `SmtpRelay`, delivery to and probing of the primary.
//! - [`tls`]: rustls configuration for both.
//! - [`spf`]: the sender's SPF lookup (the `SenderCheck` adapter; for bounces only).

pub mod client;
pub mod data;
pub mod server;
pub mod session;
pub mod spf;
pub mod tls;

pub use client::SmtpRelay;
