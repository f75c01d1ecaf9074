//! The policy check every moto-backed test runs when its server stops
//! (tests/common/iam.rs), itself checked: the requests a real account refuses are refused
//! here too, with the template as it is and with the statement that allows them taken
//! out. Each request is a line as `scripts/moto-server --log` writes it.

mod common;

use common::iam::{Principal, denied};
use common::template::template;
use serde_json::{Value, json};

/// moto's log of a stack's bucket, archive bucket and table being made (by the tests' own
/// key), then `requests`.
fn log(requests: &[Value]) -> Vec<Value> {
    let mut lines = vec![
        json!({"key": "testing", "service": "s3", "op": "CreateBucket", "resource": "mail", "status": 200}),
        json!({"key": "testing", "service": "s3", "op": "CreateBucket", "resource": "vault",
               "status": 200, "context": {"object_lock": true}}),
        json!({"key": "testing", "service": "dynamodb", "op": "CreateTable", "resource": "index", "status": 200}),
    ];
    lines.extend_from_slice(requests);
    lines
}

fn s3(p: Principal, op: &str, resource: &str, status: u64, context: Value) -> Value {
    json!({"key": p.key(), "service": "s3", "op": op, "resource": resource, "status": status,
           "context": context})
}

fn ddb(p: Principal, op: &str, resource: &str, leading: &[&str]) -> Value {
    json!({"key": p.key(), "service": "dynamodb", "op": op, "resource": resource, "status": 200,
           "context": {"leading_keys": leading}})
}

/// The template without the statement `sid` of `resource`'s policy.
fn without(resource: &str, sid: &str) -> Value {
    fn strip(v: &mut Value, sid: &str) -> bool {
        match v {
            Value::Array(items) => {
                let before = items.len();
                items.retain(|i| i["Sid"] != sid && i["Fn::If"][1]["Sid"] != sid);
                let mut found = items.len() != before;
                for i in items.iter_mut() {
                    found |= strip(i, sid);
                }
                found
            }
            Value::Object(m) => {
                let mut found = false;
                for v in m.values_mut() {
                    found |= strip(v, sid);
                }
                found
            }
            _ => false,
        }
    }
    let mut t = template();
    assert!(
        strip(&mut t["Resources"][resource], sid),
        "{resource} has no statement {sid}"
    );
    t
}

#[test]
fn a_read_of_a_missing_key_needs_list_bucket_as_s3_answers_403_without_it() {
    let read = log(&[s3(
        Principal::Ingest,
        "GetObject",
        "mail/incoming/gone",
        404,
        json!({}),
    )]);
    assert_eq!(denied(&template(), &read), Vec::<String>::new());
    let refused = denied(&without("IngestFunction", "MissingMessagesAre404"), &read);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].contains("s3:ListBucket on arn:aws:s3:::mail "),
        "{refused:?}"
    );
    // The same read answered 200 needs no ListBucket.
    let found = log(&[s3(
        Principal::Ingest,
        "GetObject",
        "mail/incoming/here",
        200,
        json!({}),
    )]);
    assert!(denied(&without("IngestFunction", "MissingMessagesAre404"), &found).is_empty());
    // The archive copy's existence check, in the archive bucket.
    let head = log(&[s3(
        Principal::Ingest,
        "HeadObject",
        "vault/journal/k",
        404,
        json!({}),
    )]);
    assert!(denied(&template(), &head).is_empty());
    assert_eq!(
        denied(
            &without("IngestFunction", "MissingArchiveCopiesAre404"),
            &head
        )
        .len(),
        1
    );
}

#[test]
fn audit_entries_are_appended_and_never_rewritten() {
    for p in Principal::ALL {
        let append = log(&[ddb(p, "PutItem", "index", &["audit#2026-12-05"])]);
        assert!(denied(&template(), &append).is_empty(), "{p:?}");
        let rewrite = log(&[ddb(p, "UpdateItem", "index", &["audit#2026-12-05"])]);
        assert_eq!(denied(&template(), &rewrite).len(), 1, "{p:?}");
        let delete = log(&[ddb(p, "BatchWriteItem", "", &["rcpt#a", "audit#x"])]);
        let delete = {
            let mut d = delete;
            d[3]["context"]["tables"] = json!(["index"]);
            d
        };
        assert_eq!(denied(&template(), &delete).len(), 1, "{p:?}");
    }
    let message = log(&[ddb(Principal::Drain, "UpdateItem", "index", &["msg#01"])]);
    assert!(denied(&template(), &message).is_empty());
}

#[test]
fn the_drain_only_creates_objects_and_only_under_incoming() {
    let create = log(&[s3(
        Principal::Drain,
        "PutObject",
        "mail/incoming/dsn",
        200,
        json!({"if_none_match": true}),
    )]);
    assert!(denied(&template(), &create).is_empty());
    let overwrite = log(&[s3(
        Principal::Drain,
        "PutObject",
        "mail/incoming/dsn",
        200,
        json!({}),
    )]);
    assert_eq!(denied(&template(), &overwrite).len(), 1);
    let elsewhere = log(&[s3(
        Principal::Drain,
        "PutObject",
        "mail/serve/dsn",
        200,
        json!({"if_none_match": true}),
    )]);
    assert_eq!(denied(&template(), &elsewhere).len(), 1);
}

#[test]
fn object_lock_headers_and_versions_need_their_own_permissions() {
    // Ingest archives a journal copy with a retention date: PutObject and
    // PutObjectRetention on the archive bucket, not on the mail bucket.
    let lock = json!({"retention": true, "if_none_match": true});
    let archived = log(&[s3(
        Principal::Ingest,
        "PutObject",
        "vault/journal/k",
        200,
        lock.clone(),
    )]);
    assert!(denied(&template(), &archived).is_empty());
    let wrong_bucket = log(&[s3(
        Principal::Ingest,
        "PutObject",
        "mail/journal/k",
        200,
        lock,
    )]);
    assert_eq!(denied(&template(), &wrong_bucket).len(), 2);
    // A legal hold in the same request needs PutObjectLegalHold, which ingest lacks.
    let held = log(&[s3(
        Principal::Ingest,
        "PutObject",
        "vault/journal/k",
        200,
        json!({"legal_hold": true}),
    )]);
    assert_eq!(denied(&template(), &held).len(), 1);
    // Deleting one version is DeleteObjectVersion; ingest deletes nothing.
    let version = log(&[s3(
        Principal::Drain,
        "DeleteObject",
        "mail/incoming/x",
        204,
        json!({"version": true}),
    )]);
    assert!(denied(&template(), &version).is_empty());
    let by_ingest = log(&[s3(
        Principal::Ingest,
        "DeleteObject",
        "mail/incoming/x",
        204,
        json!({"version": true}),
    )]);
    assert_eq!(denied(&template(), &by_ingest).len(), 1);
}

#[test]
fn listing_versions_is_limited_to_the_message_prefixes() {
    let ours = log(&[s3(
        Principal::Drain,
        "ListObjectVersions",
        "mail",
        200,
        json!({"prefix": "incoming/abc"}),
    )]);
    assert!(denied(&template(), &ours).is_empty());
    let all = log(&[s3(
        Principal::Drain,
        "ListObjectVersions",
        "mail",
        200,
        json!({}),
    )]);
    assert_eq!(denied(&template(), &all).len(), 1);
}

#[test]
fn the_tests_own_requests_are_not_checked_and_unknown_ones_are_refused() {
    let setup = log(&[
        json!({"key": "testing", "service": "s3", "op": "DeleteBucket",
                             "resource": "mail", "status": 204}),
    ]);
    assert!(denied(&template(), &setup).is_empty());
    let odd = log(&[s3(
        Principal::Operator,
        "RestoreObject",
        "mail/incoming/x",
        200,
        json!({}),
    )]);
    assert_eq!(denied(&template(), &odd).len(), 1);
}

#[test]
fn requests_the_log_did_not_understand_are_refused_not_passed() {
    // An item write whose partition key the log lost would pass every ForAllValues
    // condition (IAM: true for a request without the key); it is refused instead.
    let lost = log(&[ddb(Principal::Drain, "UpdateItem", "index", &[])]);
    assert_eq!(denied(&template(), &lost).len(), 1);
    let mut partly = log(&[ddb(Principal::Drain, "BatchWriteItem", "", &["msg#1"])]);
    partly[3]["context"]["leading_keys"] = json!(["msg#1", null]);
    partly[3]["context"]["tables"] = json!(["index"]);
    assert_eq!(denied(&template(), &partly).len(), 1);
    // A key that is neither the tests' own nor a principal's, and an unparsed line.
    let stranger = log(&[
        json!({"key": "AKIDEXAMPLE", "service": "s3", "op": "GetObject",
                                "resource": "mail/incoming/x", "status": 200}),
    ]);
    assert_eq!(denied(&template(), &stranger).len(), 1);
    let unparsed = log(&[
        json!({"key": "testing", "service": "", "op": "unparsed: boom",
                                "resource": "", "status": 200}),
    ]);
    assert_eq!(denied(&template(), &unparsed).len(), 1);
    // A versioned tag read is s3:GetObjectVersionTagging, which no policy grants.
    let version_tags = log(&[s3(
        Principal::Drain,
        "GetObjectTagging",
        "mail/incoming/x",
        200,
        json!({"version": true}),
    )]);
    let refused = denied(&template(), &version_tags);
    assert!(
        refused.len() == 1 && refused[0].contains("s3:GetObjectVersionTagging"),
        "{refused:?}"
    );
}
