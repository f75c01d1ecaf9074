//! The drain handler's messages per second against moto (emulator figures, not AWS ones):
//! N messages are received the SES way (object put, ingest run), then one `standby-drain`
//! invocation delivers them to `smtp-sink` as the primary (claims, GetObject, SMTP,
//! write-backs, tagging).
//!
//!     cargo bench --bench aws_drain            (needs the venv scripts/test makes, and postfix)

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::aws::{Moto, ses_event, ses_put};
use standby::config::Config;
use standby::lambda::drain::{DrainFunction, DrainRequest};
use standby::lambda::ingest::Ingest;
use standby::smtp::SmtpRelay;

const N: usize = 500;

fn main() {
    // `cargo test --all-targets` runs bench binaries too, without `--bench`: only build.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    common::require("smtp-sink", "postfix");
    let port = common::free_port();
    let mut sink = Command::new("smtp-sink")
        .args(["-u", "postfix", "-c", &format!("127.0.0.1:{port}"), "256"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start smtp-sink");
    common::wait_for("smtp-sink", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let moto = Moto::start();
        let (clients, settings, storage) = moto.storage("benchdrain").await;
        let ingest = Ingest::new(storage.clone(), "");
        let template = ses_event("normal.json");
        for i in 0..N {
            let ses_id = format!("drain{i:05}0000000000000000000000000000000");
            let raw = common::fixture("ses/message.eml", &format!("tok-{i}"));
            ses_put(&clients, &settings, &ses_id, raw.as_bytes()).await;
            let mut ev = template.clone();
            ev["Records"][0]["ses"]["mail"]["messageId"] = ses_id.into();
            ingest.handle(ev).await.expect("ingest");
        }
        let env = [
            ("STANDBY_BUCKET", "benchdrain".to_string()),
            ("STANDBY_TABLE", "benchdrain".to_string()),
            ("STANDBY_PRIMARY_ADDRESS", format!("127.0.0.1:{port}")),
            ("STANDBY_PRIMARY_TLS", "none".into()),
            ("STANDBY_HEALTH_UP_AFTER", "1".into()),
            ("STANDBY_DOMAINS", "example.test".into()),
        ]
        .map(|(k, v)| (k.to_string(), v));
        let config = Config::from_lambda_env(env).expect("config");
        let relay = SmtpRelay::from_config(&config).expect("relay");
        let f = DrainFunction::new(config, storage.clone(), relay);
        let t = Instant::now();
        let sum = f
            .handle(
                DrainRequest::default(),
                Some(Instant::now() + Duration::from_secs(600)),
            )
            .await
            .expect("drain");
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(sum.delivered as usize, N, "{sum:?}");
        println!(
            "drain handler vs moto, {N} messages to smtp-sink: {:.0} messages/s ({secs:.1} s)",
            N as f64 / secs
        );
    });
    let _ = sink.kill();
    let _ = sink.wait();
}
