//! `standby-ingest`: invoked by the SES receipt rule (Lambda action, Event) after the S3
//! action stored the message. Wiring only; the handler is `standby::lambda::ingest`.

use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    standby::lambda::init_tracing();
    let ingest = standby::lambda::ingest_from_env().await?;
    let ingest = &ingest;
    run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            let report = ingest.handle(event.payload).await?;
            Ok::<_, Error>(serde_json::to_value(report)?)
        },
    ))
    .await
}
