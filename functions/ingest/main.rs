//! `standby-ingest`: invoked by the SES receipt rule (Lambda action, Event) after the S3
//! action stored the message. Wiring only; the handler is `standby::lambda::ingest`.

use lambda_runtime::{Diagnostic, Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    standby::lambda::init_tracing();
    let ingest = standby::lambda::ingest_from_env().await?;
    let ingest = &ingest;
    run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            match ingest.handle(event.payload).await {
                Ok(report) => Ok(serde_json::to_value(report).unwrap_or_default()),
                Err(e) => Err(Diagnostic {
                    error_type: e.kind().into(),
                    error_message: e.to_string(),
                }),
            }
        },
    ))
    .await
}
