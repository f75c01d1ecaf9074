//! `standby-web`: the emergency inbox behind a Lambda function URL (payload 2.0,
//! responses streamed). Wiring only: the app is `standby::web::router`, set up from the
//! environment by `standby::lambda::web`.

use lambda_http::{Error, Request, run_with_streaming_response, service_fn};
use standby::lambda::{init_tracing, web};
use tower::ServiceExt;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let router = standby::web::router(web::web_from_env().await?);
    run_with_streaming_response(service_fn(move |mut req: Request| {
        let router = router.clone();
        async move {
            if let Some(ip) = web::client_ip(&req) {
                req.extensions_mut().insert(ip);
            }
            let resp = router.oneshot(req).await;
            Ok::<_, Error>(resp.unwrap_or_else(|never| match never {}))
        }
    }))
    .await
}
