//! The ingest handler's time per message against moto (emulator figures, not AWS ones):
//! each message is put where the SES S3 action would put it, then the handler indexes it
//! (HeadObject, GetObject, parse, PutItem). Prints the median, p90 and mean of 200.
//!
//!     cargo bench --bench aws_ingest            (needs the venv scripts/test makes)

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::time::{Duration, Instant};

use common::aws::{Moto, ses_event, ses_put};
use standby::lambda::ingest::Ingest;

const N: usize = 200;

fn main() {
    // `cargo test --all-targets` runs bench binaries too, without `--bench`: only build.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let moto = Moto::start();
        let (clients, settings, storage) = moto.storage("bench").await;
        let ingest = Ingest::new(storage.clone(), "");
        let template = ses_event("normal.json");
        let mut times: Vec<Duration> = Vec::with_capacity(N);
        for i in 0..N {
            let ses_id = format!("bench{i:05}0000000000000000000000000000000");
            let raw = common::fixture("ses/message.eml", &format!("tok-{i}"));
            ses_put(&clients, &settings, &ses_id, raw.as_bytes()).await;
            let mut ev = template.clone();
            ev["Records"][0]["ses"]["mail"]["messageId"] = ses_id.into();
            let t = Instant::now();
            let report = ingest.handle(ev).await.expect("ingest");
            times.push(t.elapsed());
            assert_eq!(report.indexed, 1);
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mean = times.iter().map(|d| ms(*d)).sum::<f64>() / N as f64;
        println!(
            "ingest handler vs moto, {N} messages of {} bytes: median {:.2} ms, p90 {:.2} ms, mean {:.2} ms",
            common::fixture("ses/message.eml", "tok-0").len(),
            ms(times[N / 2]),
            ms(times[N * 9 / 10]),
            mean
        );
    });
}
