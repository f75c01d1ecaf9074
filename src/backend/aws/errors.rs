//! Sorting SDK errors into transient (try again later) and permanent (a person must act).
//!
//! Transient: timeouts, connection failures, throttling, and 5xx from the service: the
//! same request can succeed later, so ingest returns an error for Lambda to retry and the
//! drain leaves the message for its next run. Permanent: everything the service refused
//! on its merits (access denied, missing table or bucket, validation): retrying would only
//! repeat the refusal, so the error says what is wrong.

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;

use crate::error::StoreError;

/// Error codes that mean "not now" rather than "no".
const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "TransactionConflictException",
    "TransactionInProgressException",
    "InternalServerError",
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeoutException",
    "LimitExceededException",
];

/// Whether an AWS error code is one of the retryable ones.
pub fn is_transient_code(code: &str) -> bool {
    TRANSIENT_CODES.contains(&code)
}

/// Turn an SDK error into a [`StoreError::Backend`] with `transient` set by the rules above.
pub fn classify<E>(backend: &'static str, op: &str, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map_or(0, |r| r.status().as_u16());
    let (transient, detail) = match &err {
        SdkError::TimeoutError(_) => (true, format!("{op}: timed out")),
        SdkError::DispatchFailure(f) => (
            !f.is_user(),
            format!("{op}: cannot reach the service ({})", describe(&err)),
        ),
        SdkError::ResponseError(_) => (true, format!("{op}: unreadable response (HTTP {status})")),
        SdkError::ConstructionFailure(_) => {
            (false, format!("{op}: bad request ({})", describe(&err)))
        }
        SdkError::ServiceError(se) => {
            let e = se.err();
            let code = e.code().unwrap_or("unknown");
            let transient = is_transient_code(code) || status >= 500;
            let msg = e.message().unwrap_or("");
            (transient, format!("{op}: {code} (HTTP {status}) {msg}"))
        }
        _ => (true, format!("{op}: {}", describe(&err))),
    };
    StoreError::Backend {
        backend,
        detail: detail.trim_end().to_string(),
        transient,
        source: Some(Box::new(err)),
    }
}

/// The error with its causes, one line.
/// A request the SDK's builder refused (a required field left unset): a bug of ours, so
/// not worth retrying.
pub fn request_build(backend: &'static str, e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Backend {
        backend,
        detail: format!("building a request: {e}"),
        transient: false,
        source: None,
    }
}

fn describe(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}
