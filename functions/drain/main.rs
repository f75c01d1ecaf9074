//! `standby-drain`: invoked every minute by the schedule, or directly with
//! `{"force": true}` / `{"dry_run": true}`. Wiring only; the handler is
//! `standby::lambda::drain`. With `STANDBY_METRICS_STACK=<stack>` (`[metrics] stack`)
//! each run also prints its CloudWatch metrics (`standby::lambda::metrics`).

use lambda_runtime::{Diagnostic, Error, LambdaEvent, run, service_fn};
use standby::lambda::{
    deadline_instant, drain::DrainRequest, drain_from_env, init_tracing, metrics,
};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let function = drain_from_env().await?;
    let function = &function;
    let stack = &function.config().metrics.stack;
    run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            let request = DrainRequest::from_payload(&event.payload);
            let deadline = deadline_instant(event.context.deadline);
            match function.handle(request, deadline).await {
                Ok(summary) => {
                    // Not for a dry run: it measures nothing (no probe, no oldest age),
                    // and a zero would flip the alarms to OK and back.
                    if let (Some(stack), false) = (stack, request.dry_run) {
                        // EMF: one line on stdout becomes the alarms' metrics.
                        println!("{}", metrics::emf(&summary, stack, chrono::Utc::now()));
                    }
                    Ok(serde_json::to_value(summary).unwrap_or_default())
                }
                Err(e) => Err(Diagnostic {
                    error_type: if e.is_transient() {
                        "StoreUnavailable"
                    } else {
                        "StoreError"
                    }
                    .into(),
                    error_message: e.to_string(),
                }),
            }
        },
    ))
    .await
}
