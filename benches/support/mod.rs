//! What the local-spool benches share: their flags and their test messages.

/// The value of `--name N` on the command line, else `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Message `i` to `to`: a plain-text message of about 2.7 KB.
pub fn message(i: usize, to: &str) -> Vec<u8> {
    format!(
        "From: Sender {i} <sender{i}@example.org>\r\nTo: {to}\r\nSubject: Message number {i}\r\n\
         Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{i}@example.org>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}",
        "A line of the message body, as mail has.\r\n".repeat(60)
    )
    .into_bytes()
}
