//! What the linters cannot see in `infra/template.yaml`: that it matches the code.
//!
//! cfn-lint, `sam validate --lint` and checkov (run by `scripts/test`) check that the
//! template is valid and hardened. These tests check that it is *ours*: the table is the
//! one `src/backend/aws/schema.rs` defines, each function may do exactly what its code
//! does (ingest cannot delete or send, the drain cannot write raw objects), each receipt
//! rule stores to S3 before it invokes ingest with scanning on, the rules' recipients come
//! from the parameters, and the drain's environment is a configuration the code accepts.

mod common;

use std::collections::BTreeSet;

use common::template::template;
use serde_json::{Value, json};
use standby::backend::aws::schema;

fn resources_of(t: &Value, kind: &str) -> Vec<(String, Value)> {
    t["Resources"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"] == kind)
        .map(|(n, r)| (n.clone(), r.clone()))
        .collect()
}

/// Every action the function's inline policies allow (an `!If` contributes both arms).
fn policy_actions(function: &Value) -> BTreeSet<String> {
    fn statements(v: &Value, out: &mut Vec<Value>) {
        match v {
            Value::Object(m) if m.contains_key("Fn::If") => {
                for arm in m["Fn::If"].as_array().unwrap().iter().skip(1) {
                    statements(arm, out);
                }
            }
            Value::Object(m) if m.contains_key("Ref") => {} // AWS::NoValue
            Value::Object(_) => out.push(v.clone()),
            _ => panic!("unexpected statement {v}"),
        }
    }
    let mut all = Vec::new();
    for policy in function["Properties"]["Policies"].as_array().unwrap() {
        assert!(
            policy.is_object() && policy.get("Statement").is_some(),
            "only inline policy documents, so the test sees every action: {policy}"
        );
        for s in policy["Statement"].as_array().unwrap() {
            statements(s, &mut all);
        }
    }
    let mut actions = BTreeSet::new();
    for s in all {
        assert_eq!(s["Effect"], "Allow", "{s}");
        match &s["Action"] {
            Value::String(a) => {
                actions.insert(a.clone());
            }
            Value::Array(list) => actions.extend(list.iter().map(|a| a.as_str().unwrap().into())),
            other => panic!("odd Action {other}"),
        }
    }
    actions
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_table_is_the_one_the_code_uses() {
    let t = template();
    let tables = resources_of(&t, "AWS::DynamoDB::Table");
    assert_eq!(tables.len(), 1);
    let p = &tables[0].1["Properties"];
    assert_eq!(p["BillingMode"], schema::billing_mode().as_str());
    assert_eq!(
        p["KeySchema"],
        json!([{ "AttributeName": schema::PK, "KeyType": "HASH" }])
    );
    let defs: BTreeSet<(String, String)> = p["AttributeDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["AttributeName"].as_str().unwrap().into(),
                d["AttributeType"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = schema::attribute_definitions()
        .iter()
        .map(|d| {
            (
                d.attribute_name().to_string(),
                d.attribute_type().as_str().to_string(),
            )
        })
        .collect();
    assert_eq!(defs, want);
    let gsi = schema::global_secondary_indexes();
    let ours = p["GlobalSecondaryIndexes"].as_array().unwrap();
    assert_eq!(ours.len(), gsi.len());
    for (theirs, code) in ours.iter().zip(&gsi) {
        assert_eq!(theirs["IndexName"], code.index_name());
        let keys: Vec<Value> = code
            .key_schema()
            .iter()
            .map(|k| json!({ "AttributeName": k.attribute_name(), "KeyType": k.key_type().as_str() }))
            .collect();
        assert_eq!(theirs["KeySchema"], json!(keys), "{}", code.index_name());
        assert_eq!(
            theirs["Projection"]["ProjectionType"],
            code.projection()
                .and_then(|p| p.projection_type())
                .unwrap()
                .as_str()
        );
    }
    assert_eq!(ours[0]["IndexName"], schema::GSI);
    assert_eq!(
        p["TimeToLiveSpecification"],
        json!({ "AttributeName": schema::TTL_ATTRIBUTE, "Enabled": true })
    );
    assert_eq!(
        p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"],
        true
    );
}

#[test]
fn each_function_may_do_what_its_code_does_and_no_more() {
    let t = template();
    let f = &t["Resources"];
    let ingest = policy_actions(&f["IngestFunction"]);
    assert_eq!(
        ingest,
        set(&[
            "dynamodb:BatchWriteItem",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "s3:DeleteObjectTagging",
            "s3:GetObject",
            "s3:ListBucket",
            "s3:PutObject",
            "s3:PutObjectRetention",
            // A late event reopening a delivered record lifts its delivered tag.
            "s3:PutObjectTagging",
        ])
    );
    // Without s3:ListBucket a missing key answers 403, not 404: the archive copy of a
    // journal copy is made after a HeadObject that finds it missing, by ingest and by the
    // drain's reconciler alike; a missing message must read as missing too.
    for function in ["IngestFunction", "DrainFunction"] {
        let statements = f[function]["Properties"]["Policies"][0]["Statement"]
            .as_array()
            .unwrap();
        // ListBucket on the mail bucket without a condition: a missing message must
        // read as missing (404), and a GetObject's implicit list check carries no prefix.
        assert!(
            statements.iter().any(|st| st["Action"] == "s3:ListBucket"
                && st["Resource"] == json!({ "Fn::GetAtt": "MailBucket.Arn" })
                && st.get("Condition").is_none()),
            "{function}: unconditioned ListBucket on the mail bucket"
        );
        let list = statements
            .iter()
            .find(|st| st.to_string().contains("MissingArchiveCopiesAre404"))
            .unwrap_or_else(|| panic!("{function}: ListBucket on the archive"));
        assert_eq!(list["Fn::If"][1]["Action"], "s3:ListBucket", "{list}");
        assert_eq!(
            list["Fn::If"][1]["Resource"],
            json!({ "Fn::GetAtt": "ArchiveBucket.Arn" }),
            "{list}"
        );
    }
    assert!(
        f["IngestFunction"]["Properties"]["Policies"][0]["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .any(|st| st["Sid"] == "MissingMessagesAre404"
                && st["Resource"] == json!({ "Fn::GetAtt": "MailBucket.Arn" })),
        "ingest: ListBucket on the mail bucket"
    );
    // Ingest writes objects only into the archive (journal copies), never the mail bucket.
    let archive = f["IngestFunction"]["Properties"]["Policies"][0]["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st.to_string().contains("ArchiveJournalCopies"))
        .expect("the archive statement")
        .clone();
    assert_eq!(
        archive["Fn::If"][1]["Resource"],
        json!({ "Fn::Sub": "${ArchiveBucket.Arn}/journal/*" })
    );
    let drain = policy_actions(&f["DrainFunction"]);
    assert_eq!(
        drain,
        set(&[
            "dynamodb:BatchWriteItem",
            "dynamodb:DeleteItem",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:Query",
            "dynamodb:UpdateItem",
            "s3:DeleteObject",
            "s3:DeleteObjectTagging",
            "s3:DeleteObjectVersion",
            "s3:GetObject",
            "s3:GetObjectTagging",
            "s3:ListBucket",
            "s3:ListBucketVersions",
            "s3:PutObject",
            "s3:PutObjectRetention",
            "s3:PutObjectTagging",
            "secretsmanager:GetSecretValue",
            // What users sent, with sending on (tests/aws_drain.rs).
            "ses:SendEmail",
            "ses:SendRawEmail",
            "sns:Publish",
            "sqs:DeleteMessage",
            "sqs:ReceiveMessage",
        ])
    );
    let failures = t["Resources"]["DrainFunction"]["Properties"]["Environment"]["Variables"]
        ["STANDBY_INGEST_FAILURES_QUEUE"]
        .clone();
    assert_eq!(
        failures,
        json!({ "Ref": "IngestFailures" }),
        "the queue's URL"
    );
    // The drain writes only new objects (bounces): PutObject is allowed with If-None-Match
    // only, so it can never overwrite a stored message.
    let statements = f["DrainFunction"]["Properties"]["Policies"][0]["Statement"]
        .as_array()
        .unwrap();
    let put = statements
        .iter()
        .find(|st| st["Action"] == "s3:PutObject")
        .expect("a PutObject statement");
    assert_eq!(
        put["Condition"]["Null"]["s3:if-none-match"], "false",
        "{put}"
    );
    // The retention job deletes messages, never audit entries: DeleteItem only on keys
    // starting with msg#, DeleteObject only under the prefix.
    // Batch writes can delete too: they are allowed only on the same keys.
    for st in statements.iter().chain(
        f["IngestFunction"]["Properties"]["Policies"][0]["Statement"]
            .as_array()
            .unwrap(),
    ) {
        let text = st["Action"].to_string();
        if text.contains("dynamodb:DeleteItem") || text.contains("dynamodb:BatchWriteItem") {
            let keys = &st["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"];
            let keys: Vec<&str> = keys
                .as_array()
                .expect("a LeadingKeys condition")
                .iter()
                .map(|k| k.as_str().unwrap())
                .collect();
            // Messages and their recipient items, or one-time marks (a continuity
            // notice to send again).
            assert!(
                keys.iter().all(|k| *k == "msg#*" || *k == "rcpt#*")
                    || (keys == ["mark#*"] && text == "\"dynamodb:DeleteItem\""),
                "never audit# items: {st}"
            );
        }
    }
    let delete_object = statements
        .iter()
        .find(|st| st["Sid"] == "RetentionDeletesObjects")
        .expect("a DeleteObject statement");
    assert_eq!(
        delete_object["Action"],
        json!(["s3:DeleteObject", "s3:DeleteObjectVersion"]),
        "a deleted message's bytes go with every version"
    );
    assert_eq!(
        delete_object["Resource"],
        json!([
            { "Fn::Sub": "${MailBucket.Arn}/incoming/*" },
            { "Fn::Sub": "${MailBucket.Arn}/serve/*" }
        ])
    );
    for (name, actions) in [("ingest", &ingest), ("drain", &drain)] {
        if name == "ingest" {
            for forbidden in [
                "s3:DeleteObject",
                "s3:DeleteObjectVersion",
                "dynamodb:DeleteItem",
            ] {
                assert!(!actions.contains(forbidden), "{name} must not {forbidden}");
            }
        }
        // The drain sends what users sent (SESv2, raw), from the first domain's
        // identity only; nothing else sends, and nothing is a wildcard.
        let sends = |a: &&String| a.starts_with("ses:");
        let allowed: &[&str] = if name == "drain" {
            &["ses:SendEmail", "ses:SendRawEmail"]
        } else {
            &[]
        };
        assert!(
            actions
                .iter()
                .filter(sends)
                .all(|a| allowed.contains(&a.as_str()))
                && !actions.iter().any(|a| a.contains('*')),
            "{name}: no other sending, no wildcards: {actions:?}"
        );
    }
    let send = f["DrainFunction"]["Properties"]["Policies"][0]["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["Sid"] == "SendUsersMail")
        .expect("the drain's SendUsersMail statement")
        .clone();
    assert_eq!(
        send["Resource"]["Fn::Sub"][0],
        "arn:${AWS::Partition}:ses:${AWS::Region}:${AWS::AccountId}:identity/${Domain}"
    );
    // Object permissions are scoped to the prefix the functions are told to use.
    let prefix = t["Globals"]["Function"]["Environment"]["Variables"]["STANDBY_PREFIX"]
        .as_str()
        .unwrap()
        .to_string();
    let text = t["Resources"]["IngestFunction"]["Properties"]["Policies"].to_string();
    assert!(
        text.contains(&format!("${{MailBucket.Arn}}/{prefix}*")),
        "{text}"
    );

    let d = &f["DrainFunction"]["Properties"];
    // Reserving concurrency fails where the account's total is 100 or less (Lambda keeps
    // 100 unreserved): optional (on by default: one run at a time).
    assert_eq!(
        d["ReservedConcurrentExecutions"],
        json!({ "Fn::If": ["ReserveDrain", 1, { "Ref": "AWS::NoValue" }] })
    );
    assert_eq!(t["Parameters"]["DrainReservedConcurrency"]["MinValue"], 0);
    // Scheduled (asynchronous) runs are never retried or queued for hours.
    assert_eq!(d["EventInvokeConfig"]["MaximumRetryAttempts"], 0);
    assert_eq!(d["EventInvokeConfig"]["MaximumEventAgeInSeconds"], 60);
    // Lambda blocks outbound port 25.
    let rule = t["Rules"]["DrainNotOnPort25"]["Assertions"][0]["Assert"].to_string();
    assert!(
        rule.contains("DrainPort") && rule.contains("\"25\""),
        "{rule}"
    );
    // The table (audit log included) outlives the stack, encrypted with the free AWS owned key.
    let table = &f["IndexTable"];
    assert_eq!(table["DeletionPolicy"], "Retain");
    assert_eq!(table["UpdateReplacePolicy"], "Retain");
    assert_eq!(table["Properties"]["SSESpecification"]["SSEEnabled"], false);
    let on_failure =
        &f["IngestFunction"]["Properties"]["EventInvokeConfig"]["DestinationConfig"]["OnFailure"];
    assert_eq!(on_failure["Type"], "SQS");
    assert_eq!(
        on_failure["Destination"],
        json!({ "Fn::GetAtt": "IngestFailures.Arn" })
    );
    for (group, function) in [
        ("IngestLogs", "IngestFunction"),
        ("DrainLogs", "DrainFunction"),
        ("WebLogs", "WebFunction"),
    ] {
        let g = &f[group]["Properties"];
        assert_eq!(
            g["LogGroupName"],
            json!({ "Fn::Sub": format!("/aws/lambda/${{{function}}}") })
        );
        assert_eq!(g["RetentionInDays"], json!({ "Ref": "LogRetentionDays" }));
    }
    // Nothing invokes a function before its log group exists (Lambda would create it
    // itself, without retention, and the stack's would then fail as already there).
    assert!(
        f["DrainSchedule"]["DependsOn"]
            .as_array()
            .is_some_and(|d| d.contains(&json!("DrainLogs"))),
        "{}",
        f["DrainSchedule"]
    );
    let rules: Vec<_> = f
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"] == "AWS::SES::ReceiptRule")
        .collect();
    assert!(rules.len() >= 2);
    for (name, rule) in rules {
        assert!(
            rule["DependsOn"]
                .as_array()
                .is_some_and(|d| d.contains(&json!("IngestLogs"))),
            "{name} invokes the ingest function before its log group exists"
        );
    }
    let schedule = &f["DrainSchedule"]["Properties"];
    assert_eq!(schedule["ScheduleExpression"], "rate(1 minute)");
    assert_eq!(
        schedule["Target"]["Arn"],
        json!({ "Fn::GetAtt": "DrainFunction.Arn" })
    );
}

#[test]
fn every_rule_stores_before_it_invokes_ingest_with_scanning_on() {
    let t = template();
    let rules = resources_of(&t, "AWS::SES::ReceiptRule");
    assert_eq!(
        rules.len(),
        5,
        "four for the domains' recipients, one for the journal"
    );
    let prefix = &t["Globals"]["Function"]["Environment"]["Variables"]["STANDBY_PREFIX"];
    for (name, r) in &rules {
        let rule = &r["Properties"]["Rule"];
        assert_eq!(rule["ScanEnabled"], true, "{name}: spam and virus scanning");
        assert_eq!(rule["Enabled"], true, "{name}");
        assert_eq!(rule["TlsPolicy"], json!({ "Ref": "ReceiveTlsPolicy" }));
        let actions = rule["Actions"].as_array().unwrap();
        assert_eq!(actions.len(), 2, "{name}");
        let s3 = &actions[0]["S3Action"];
        assert_eq!(
            s3["BucketName"],
            json!({ "Ref": "MailBucket" }),
            "{name}: S3 first"
        );
        assert_eq!(
            &s3["ObjectKeyPrefix"], prefix,
            "{name}: the prefix ingest reads"
        );
        let lambda = &actions[1]["LambdaAction"];
        assert_eq!(
            lambda["FunctionArn"],
            json!({ "Fn::GetAtt": "IngestFunction.Arn" }),
            "{name}: then ingest"
        );
        assert_eq!(lambda["InvocationType"], "Event", "{name}: asynchronous");
        // SES can write and invoke before the rule exists only with the policy and the
        // permission in place.
        let deps = r["DependsOn"].as_array().unwrap();
        assert!(deps.contains(&json!("MailBucketPolicy")), "{name}");
        let n = name.trim_start_matches("ReceiptRule");
        assert!(
            deps.contains(&json!(format!("IngestPermission{n}"))),
            "{name}"
        );
        let perm = &t["Resources"][format!("IngestPermission{n}")]["Properties"];
        assert_eq!(perm["Principal"], "ses.amazonaws.com");
        assert_eq!(perm["SourceAccount"], json!({ "Ref": "AWS::AccountId" }));
        let arn = perm["SourceArn"]["Fn::Sub"].as_str().unwrap();
        assert!(
            arn.ends_with(&format!(":receipt-rule/${{AWS::StackName}}-{n}")),
            "{name}: the permission names this rule: {arn}"
        );
        assert_eq!(
            rule["Name"],
            json!({ "Fn::Sub": format!("${{AWS::StackName}}-{n}") })
        );
    }
}

#[test]
fn rule_recipients_come_from_the_parameters() {
    let t = template();
    let r = &t["Resources"];
    assert_eq!(
        r["ReceiptRule1"]["Properties"]["Rule"]["Recipients"],
        json!({ "Fn::If": ["HasRecipients", { "Ref": "Recipients" }, { "Ref": "DomainNames" }] }),
        "without explicit recipients the rule takes every address of the domains"
    );
    for n in 2..=4 {
        let rule = &r[format!("ReceiptRule{n}")];
        assert_eq!(rule["Condition"], format!("HasRecipients{n}"));
        assert_eq!(
            rule["Properties"]["Rule"]["Recipients"],
            json!({ "Ref": format!("Recipients{n}") })
        );
        assert_eq!(
            t["Parameters"][format!("Recipients{n}")]["Type"],
            "CommaDelimitedList"
        );
        // A later rule exists only with the one before it, which it is placed after.
        if n > 2 {
            let cond = t["Conditions"][format!("HasRecipients{n}")].to_string();
            assert!(cond.contains(&format!("HasRecipients{}", n - 1)), "{cond}");
        }
    }
}

#[test]
fn journal_copies_go_to_a_locked_archive_with_per_object_retention() {
    let t = template();
    let r = &t["Resources"];
    let a = &r["ArchiveBucket"];
    assert_eq!(a["Condition"], "HasJournal");
    let p = &a["Properties"];
    assert_eq!(p["ObjectLockEnabled"], true);
    assert!(
        p.get("ObjectLockConfiguration").is_none(),
        "no default retention: each copy gets its own"
    );
    assert_eq!(p["VersioningConfiguration"]["Status"], "Enabled");
    let rules = p["LifecycleConfiguration"]["Rules"].as_array().unwrap();
    let cold = rules.iter().find(|x| x["Id"] == "journal-to-cold").unwrap();
    assert_eq!(cold["Prefix"], "journal/");
    assert_eq!(cold["Transitions"][0]["StorageClass"], "GLACIER_IR");
    assert_eq!(cold["Transitions"][0]["TransitionInDays"], 30);
    let expiry = rules.iter().find(|x| x["Id"] == "journal-expiry").unwrap();
    assert_eq!(expiry["ExpirationInDays"], json!({ "Ref": "JournalDays" }));
    let env = &r["IngestFunction"]["Properties"]["Environment"]["Variables"];
    assert_eq!(
        env["STANDBY_ARCHIVE_BUCKET"],
        json!({ "Fn::If": ["HasJournal", { "Ref": "ArchiveBucket" }, ""] })
    );
    assert_eq!(
        env["STANDBY_RETENTION_JOURNAL_DAYS"],
        json!({ "Ref": "JournalDays" })
    );
    assert_eq!(
        t["Parameters"]["ArchiveLockMode"]["AllowedValues"],
        json!(["GOVERNANCE", "COMPLIANCE"])
    );
    let journal = &r["ReceiptRuleJournal"];
    assert_eq!(journal["Condition"], "HasJournal");
    assert_eq!(
        journal["Properties"]["Rule"]["Recipients"],
        json!({ "Ref": "JournalAddresses" })
    );
}

#[test]
fn the_bucket_takes_only_our_rules_puts_over_tls_and_expires_delivered_mail() {
    let t = template();
    let b = &t["Resources"]["MailBucket"]["Properties"];
    assert_eq!(b["VersioningConfiguration"]["Status"], "Enabled");
    assert!(b.get("ObjectLockConfiguration").is_none());
    assert!(b.get("ObjectLockEnabled").is_none());
    let block = &b["PublicAccessBlockConfiguration"];
    for k in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(block[k], true, "{k}");
    }
    let rules = b["LifecycleConfiguration"]["Rules"].as_array().unwrap();
    let delivered = rules.iter().find(|r| r["Id"] == "delivered-mail").unwrap();
    let (k, v) = standby::backend::aws::DELIVERED_TAG;
    assert_eq!(delivered["TagFilters"], json!([{ "Key": k, "Value": v }]));
    assert_eq!(
        delivered["ExpirationInDays"],
        json!({ "Ref": "RetentionDays" })
    );
    assert!(
        rules
            .iter()
            .any(|r| r.get("NoncurrentVersionExpiration").is_some())
    );

    let policy = &t["Resources"]["MailBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"];
    let tls = policy
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Sid"] == "TlsOnly")
        .unwrap();
    assert_eq!(tls["Effect"], "Deny");
    assert_eq!(tls["Condition"]["Bool"]["aws:SecureTransport"], "false");
    let ses = policy
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Principal"]["Service"] == "ses.amazonaws.com")
        .unwrap();
    assert_eq!(ses["Action"], "s3:PutObject");
    assert_eq!(
        ses["Condition"]["StringEquals"]["aws:SourceAccount"],
        json!({ "Ref": "AWS::AccountId" })
    );
    let arn = ses["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"]
        .as_str()
        .unwrap();
    assert!(
        arn.contains("receipt-rule-set/${RuleSetName}:receipt-rule/"),
        "{arn}"
    );
}

#[test]
fn the_drain_environment_is_a_configuration_the_code_accepts() {
    let t = template();
    let vars = t["Resources"]["DrainFunction"]["Properties"]["Environment"]["Variables"]
        .as_object()
        .unwrap();
    // Stand in a plausible value for each intrinsic, as CloudFormation would resolve it
    // with the parameters' defaults (PrimaryAuthUser empty: no AUTH).
    let resolve = |auth: bool| -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| {
                let value = match (k.as_str(), v) {
                    (_, Value::String(s)) => s.clone(),
                    // `!If [HasAuth, then, else]`: the branch the condition picks.
                    // `!If [HasJournal, ...]`: JournalAddresses defaults to empty.
                    (_, Value::Object(o))
                        if o.contains_key("Fn::If") && o["Fn::If"][0] == "HasJournal" =>
                    {
                        o["Fn::If"][2].as_str().unwrap().to_string()
                    }
                    // `!If [HasWebhookSecret, ...]`: AlertWebhookSecretArn defaults to empty.
                    (_, Value::Object(o))
                        if o.contains_key("Fn::If") && o["Fn::If"][0] == "HasWebhookSecret" =>
                    {
                        o["Fn::If"][2].as_str().unwrap().to_string()
                    }
                    // `!If [Sending, ses, ""]`: with sending on (the code must accept it).
                    (_, Value::Object(o))
                        if o.contains_key("Fn::If") && o["Fn::If"][0] == "Sending" =>
                    {
                        o["Fn::If"][1].as_str().unwrap().to_string()
                    }
                    (_, Value::Object(o)) if o.contains_key("Fn::If") => {
                        let branches = &o["Fn::If"];
                        assert_eq!(branches[0], "HasAuth", "{k}");
                        match (auth, &branches[1]) {
                            (false, _) => branches[2].as_str().unwrap().to_string(),
                            (true, Value::String(s)) => s.clone(),
                            (true, _) => "arn:aws:secretsmanager:eu-west-1:1:secret:pw".into(),
                        }
                    }
                    ("STANDBY_PRIMARY_AUTH_USER", _) if auth => "standby".into(),
                    ("STANDBY_PRIMARY_ADDRESS", _) => "mail.example.com:587".into(),
                    ("STANDBY_PRIMARY_TLS", _) => "required".into(),
                    ("STANDBY_DOMAINS", _) => "example.com,example.org".into(),
                    ("STANDBY_HOLD_DAYS", _) => "5".into(),
                    ("STANDBY_KEEP_DELIVERED_DAYS", _) => "30".into(),
                    ("STANDBY_DSN_REPORTING_MTA", _) => "example.com".into(),
                    ("STANDBY_RETENTION_JOURNAL_DAYS", _) => "2555".into(),
                    ("STANDBY_RETENTION_FAILED_DAYS", _) => "90".into(),
                    ("STANDBY_RETENTION_CONFIDENTIAL", _) => {
                        r#"[{"name": "hr", "rcpt": "*@hr.example.com", "keep_days": 0}]"#.into()
                    }
                    // PrimaryAuthUser / JournalAddresses default to empty.
                    (
                        "STANDBY_PRIMARY_AUTH_USER"
                        | "STANDBY_JOURNAL_ADDRESSES"
                        | "STANDBY_JOURNAL_ALLOW",
                        _,
                    ) => String::new(),
                    ("STANDBY_ARCHIVE_LOCK_MODE", _) => "GOVERNANCE".into(),
                    // AlertWebhook and AlertEmails default to empty; the function URL.
                    ("STANDBY_ALERTS_WEBHOOK" | "STANDBY_ALERTS_EMAIL", _) => String::new(),
                    ("STANDBY_ALERTS_SNS_TOPIC", _) => {
                        "arn:aws:sns:eu-west-1:1:standby-prod-AlarmTopic".into()
                    }
                    ("STANDBY_WEB_PUBLIC_URL", _) => {
                        "https://abc.lambda-url.eu-west-1.on.aws/".into()
                    }
                    _ => "standby-prod".into(),
                };
                (k.clone(), value)
            })
            .collect()
    };
    let env = resolve(false);
    let c = standby::config::Config::from_lambda_env(env.clone())
        .unwrap_or_else(|e| panic!("{e}\n{env:?}"));
    assert_eq!(c.primary_addr(), "mail.example.com:587");
    assert_eq!(c.keep_delivered_days, Some(30));
    assert_eq!(c.primary.auth_user, None);
    assert_eq!(c.domains, ["example.com", "example.org"]);
    assert_eq!(c.dsn.reporting_mta.as_deref(), Some("example.com"));
    let policy = c.retention();
    assert_eq!(
        (policy.delivered_days, policy.journal_days),
        (Some(30), Some(2555))
    );
    assert_eq!(c.metrics.stack.as_deref(), Some("standby-prod"));
    // With PrimaryAuthUser set, the password's secret ARN is in the variable
    // auth_password_env names, which is therefore not a setting.
    let env = resolve(true);
    let c = standby::config::Config::from_lambda_env(env.clone())
        .unwrap_or_else(|e| panic!("{e}\n{env:?}"));
    assert_eq!(c.primary.auth_user.as_deref(), Some("standby"));
    let secret_var = c.primary.auth_password_env.as_deref().unwrap();
    let secret = env.iter().find(|(k, _)| k == secret_var).map(|(_, v)| v);
    assert!(
        secret.is_some_and(|v| standby::backend::aws::secrets::is_secret_arn(v)),
        "{secret_var} holds the secret ARN: {env:?}"
    );
    // With a journal configured, the drain's reconciler files journal copies as the
    // ingest does: the same addresses, clients and archive.
    let mut env = resolve(false);
    for (k, v) in [
        ("STANDBY_JOURNAL_ADDRESSES", "journal@standby.example.com"),
        ("STANDBY_JOURNAL_ALLOW", "192.0.2.25/32"),
        ("STANDBY_ARCHIVE_BUCKET", "archive"),
    ] {
        assert!(vars.contains_key(k), "the drain function sets {k}");
        env.retain(|(name, _)| name != k);
        env.push((k.into(), v.into()));
    }
    let c = standby::config::Config::from_lambda_env(env.clone())
        .unwrap_or_else(|e| panic!("{e}\n{env:?}"));
    assert!(c.journal().matches("journal@standby.example.com"));
    assert!(standby::lambda::journal_allow(&c).permits("192.0.2.25".parse().unwrap()));
    // The ingest function's own variables (with a journal configured) load too.
    let ingest = [
        ("STANDBY_BUCKET", "mail"),
        ("STANDBY_TABLE", "index"),
        ("STANDBY_DOMAINS", "example.com"),
        ("STANDBY_JOURNAL_ADDRESSES", "journal@standby.example.com"),
        ("STANDBY_JOURNAL_ALLOW", "192.0.2.25/32,2001:db8::/64"),
        ("STANDBY_RETENTION_JOURNAL_DAYS", "2555"),
        ("STANDBY_ARCHIVE_BUCKET", "archive"),
        ("STANDBY_ARCHIVE_LOCK_MODE", "COMPLIANCE"),
        ("STANDBY_RETENTION_CONFIDENTIAL", "[]"),
    ];
    let names = t["Resources"]["IngestFunction"]["Properties"]["Environment"]["Variables"]
        .as_object()
        .unwrap();
    for (k, _) in &ingest[2..] {
        assert!(names.contains_key(*k), "the ingest function sets {k}");
    }
    let c = standby::config::Config::from_ingest_env(
        ingest.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap();
    assert!(
        c.journal()
            .matches("journal+bob=example.com@standby.example.com")
    );
    // JournalAllow feeds STANDBY_JOURNAL_ALLOW; the ingest function checks it.
    assert_eq!(
        names["STANDBY_JOURNAL_ALLOW"],
        json!({ "Fn::Join": [",", { "Ref": "JournalAllow" }] })
    );
    let allow = standby::lambda::journal_allow(&c);
    assert!(allow.permits("192.0.2.25".parse().unwrap()));
    assert!(allow.permits("2001:db8::7".parse().unwrap()));
    assert!(!allow.permits("192.0.2.26".parse().unwrap()));
    assert!(!allow.permits("127.0.0.1".parse().unwrap()));
    let rule = &t["Rules"]["JournalNeedsAllow"];
    assert_eq!(
        rule["Assertions"][0]["Assert"],
        json!({ "Fn::Not": [{ "Fn::Equals": [{ "Fn::Join": ["", { "Ref": "JournalAllow" }] }, ""] }] })
    );
    assert_eq!(
        c.archive().map(|a| a.mode),
        Some(standby::config::LockMode::Compliance)
    );
    // Every variable a function gets (the globals included) has one meaning: a setting's
    // one name, the log filter, or the variable a `*_env` key names.
    let named: Vec<&str> = vars
        .iter()
        .filter(|(k, _)| k.ends_with("_ENV"))
        .filter_map(|(_, v)| v.as_str().or_else(|| v["Fn::If"][1].as_str()))
        .collect();
    for function in ["IngestFunction", "DrainFunction"] {
        let own = t["Resources"][function]["Properties"]["Environment"]["Variables"]
            .as_object()
            .unwrap();
        let globals = t["Globals"]["Function"]["Environment"]["Variables"]
            .as_object()
            .unwrap();
        for name in own.keys().chain(globals.keys()) {
            assert!(
                standby::config::Config::env_names().path(name).is_some()
                    || name == standby::config::ENV_LOG
                    || named.contains(&name.as_str()),
                "{function}: {name} is no setting (see Config::env_names)"
            );
        }
    }
    // The alarms read the namespace the drain writes.
    for alarm in ["MailHeldAlarm", "OldestHeldAlarm", "ProbeFailureAlarm"] {
        let p = &t["Resources"][alarm]["Properties"];
        assert_eq!(
            p["Namespace"],
            standby::lambda::metrics::NAMESPACE,
            "{alarm}"
        );
        assert_eq!(p["Dimensions"][0]["Name"], "Stack");
        // A metric the drain declares: an alarm on one it does not write never fires.
        let metric = p["MetricName"].as_str().unwrap_or_default();
        assert!(
            standby::lambda::metrics::declared().contains(&metric.to_string()),
            "{alarm} watches {metric}, which the drain does not write"
        );
    }
}

#[test]
fn a_serve_node_may_store_only_new_objects_under_its_own_prefix() {
    let t = template();
    let doc = &t["Resources"]["ServeNodePolicy"]["Properties"]["PolicyDocument"];
    let wrapped = json!({ "Properties": { "Policies": [doc] } });
    assert_eq!(
        policy_actions(&wrapped),
        set(&[
            "dynamodb:BatchWriteItem",
            "dynamodb:DeleteItem",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:Query",
            "dynamodb:UpdateItem",
            "s3:DeleteObject",
            "s3:DeleteObjectTagging",
            "s3:DeleteObjectVersion",
            "s3:GetObject",
            // 404, not 403, for a record whose object is gone.
            "s3:ListBucket",
            "s3:ListBucketVersions",
            "s3:PutObject",
            "s3:PutObjectRetention",
            "s3:PutObjectTagging",
            // What users send, [outbound] mode = "ses" (tests/submission.rs).
            "ses:SendEmail",
            "ses:SendRawEmail",
            "sns:Publish",
        ])
    );
    let statements = doc["Statement"].as_array().unwrap();
    // Sending only from the first domain's identity.
    let send = statements
        .iter()
        .find(|st| st["Sid"] == "SendUsersMail")
        .expect("a SendEmail statement");
    assert_eq!(
        send["Resource"]["Fn::Sub"][0],
        "arn:${AWS::Partition}:ses:${AWS::Region}:${AWS::AccountId}:identity/${Domain}"
    );
    // Received mail goes under the code's serve prefix, create-only, never under the SES
    // prefix (where the reconciler would take it for SES's).
    let put = statements
        .iter()
        .find(|st| st["Action"] == "s3:PutObject")
        .expect("a PutObject statement");
    assert_eq!(
        put["Resource"],
        json!({ "Fn::Sub": format!("${{MailBucket.Arn}}/{}*", standby::config::SERVE_PREFIX) })
    );
    assert_eq!(put["Condition"]["Null"]["s3:if-none-match"], "false");
    // Deletes reach messages only, never audit entries.
    for st in statements {
        let text = st["Action"].to_string();
        if text.contains("dynamodb:DeleteItem") || text.contains("dynamodb:BatchWriteItem") {
            let keys = &st["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"];
            assert!(
                keys == &json!(["msg#*", "rcpt#*"])
                    || (keys == &json!(["mark#*"]) && st["Action"] == "dynamodb:DeleteItem"),
                "{st}"
            );
        }
    }
}

/// The rule set name parameter takes exactly what SES takes (CreateReceiptRuleSet: ASCII
/// letters, digits, underscores and dashes, starting and ending with a letter or digit,
/// at most 64 characters), so a bad name fails at the parameter, not half-way through a
/// deploy.
#[test]
fn the_rule_set_name_pattern_is_ses_s() {
    let long = "a".repeat(64);
    let too_long = "a".repeat(65);
    accepts_exactly(
        "RuleSetName",
        &["standby-mx", "a", "A_1-b", long.as_str()],
        &["a.b", "-x", "x-", "_x", "x_", "", "a b", too_long.as_str()],
    );
}

/// The secret's ARN must be complete (the name and the six characters Secrets Manager
/// appends): the functions' policies name it as given, and IAM matches a partial ARN
/// against no secret, so GetSecretValue would be denied on the first delivery.
#[test]
fn the_secret_parameter_takes_complete_arns_only() {
    accepts_exactly(
        "PrimarySecretArn",
        &[
            "",
            "arn:aws:secretsmanager:eu-west-1:111122223333:secret:standby/primary-AbC123",
            "arn:aws-us-gov:secretsmanager:us-gov-west-1:111122223333:secret:pw-a1b2c3",
        ],
        &[
            "arn:aws:secretsmanager:eu-west-1:111122223333:secret:standby/primary",
            "arn:aws:secretsmanager:eu-west-1:1:secret:pw-AbC123",
            "standby/primary",
        ],
    );
}

/// Parameter `name`'s AllowedPattern accepts every one of `good` and none of `bad`,
/// checked with Python's `re`, which reads the pattern as CloudFormation does.
fn accepts_exactly(name: &str, good: &[&str], bad: &[&str]) {
    let t = template();
    let pattern = t["Parameters"][name]["AllowedPattern"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} has no AllowedPattern"))
        .to_string();
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import re, sys, json; p = sys.argv[1]; \
             print(json.dumps([bool(re.fullmatch(p, n)) for n in json.loads(sys.argv[2])]))",
            &pattern,
            &serde_json::to_string(&[good, bad].concat()).unwrap(),
        ])
        .output()
        .expect("python3 (apt-get install -y python3)");
    let got: Vec<bool> = serde_json::from_slice(&out.stdout).unwrap();
    let want: Vec<bool> = good
        .iter()
        .map(|_| true)
        .chain(bad.iter().map(|_| false))
        .collect();
    assert_eq!(
        got, want,
        "{name} {pattern}: {good:?} accepted, {bad:?} refused"
    );
}

/// The audit log is append-only for everything the stack runs: every statement that lets a
/// function, a `standby serve` node or an operator write to the table names the partition keys it may
/// write (`dynamodb:LeadingKeys`), and audit entries (`audit#...`) may only be put (the
/// code puts them with `attribute_not_exists(pk)`), never updated, deleted or batch
/// written.
#[test]
fn audit_entries_can_only_be_appended() {
    fn flatten(v: &Value, out: &mut Vec<Value>) {
        match v {
            Value::Array(a) => a.iter().for_each(|s| flatten(s, out)),
            Value::Object(m) if m.contains_key("Fn::If") => {
                for arm in m["Fn::If"].as_array().unwrap().iter().skip(1) {
                    flatten(arm, out);
                }
            }
            Value::Object(m) if m.contains_key("Ref") => {}
            Value::Object(_) => out.push(v.clone()),
            _ => panic!("unexpected statement {v}"),
        }
    }
    let t = template();
    let r = &t["Resources"];
    let mut policies: Vec<(&str, Vec<Value>)> = Vec::new();
    for function in ["IngestFunction", "DrainFunction"] {
        let mut all = Vec::new();
        for p in r[function]["Properties"]["Policies"].as_array().unwrap() {
            flatten(&p["Statement"], &mut all);
        }
        policies.push((function, all));
    }
    for managed in ["ServeNodePolicy", "OperatorPolicy"] {
        let mut statements = Vec::new();
        flatten(
            &r[managed]["Properties"]["PolicyDocument"]["Statement"],
            &mut statements,
        );
        policies.push((managed, statements));
    }
    let writes = [
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:BatchWriteItem",
    ];
    for (name, statements) in policies {
        let mut appends = 0;
        for st in statements {
            let actions: Vec<String> = match &st["Action"] {
                Value::String(a) => vec![a.clone()],
                Value::Array(a) => a.iter().map(|a| a.as_str().unwrap().to_string()).collect(),
                other => panic!("{name}: action {other}"),
            };
            if !actions.iter().any(|a| writes.contains(&a.as_str())) {
                continue;
            }
            let keys: Vec<&str> =
                st["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name}: a table write without LeadingKeys: {st}"))
                    .iter()
                    .map(|k| k.as_str().unwrap())
                    .collect();
            if keys.iter().any(|k| k.starts_with("audit#")) {
                assert_eq!(actions, ["dynamodb:PutItem"], "{name}: audit entries: {st}");
                assert_eq!(keys, ["audit#*"], "{name}: {st}");
                appends += 1;
            }
            assert!(
                keys.iter().all(|k| !k.contains('*') || k.ends_with("#*")),
                "{name}: a key pattern wide enough to match audit#: {st}"
            );
        }
        assert_eq!(appends, 1, "{name}: one statement appends audit entries");
    }
}

/// The first domain's SES identity is the stack's only when it was absent
/// (`CreateDomainIdentity`, set by `scripts/deploy`), and it outlives the stack either way:
/// `scripts/destroy` must not take an identity other uses of SES depend on. Its DKIM
/// records and output go with it.
#[test]
fn the_ses_identity_is_made_only_when_absent_and_kept() {
    let t = template();
    let r = &t["Resources"];
    assert_eq!(t["Parameters"]["CreateDomainIdentity"]["Default"], "true");
    let id = &r["DomainIdentity"];
    assert_eq!(id["Condition"], "OwnIdentity");
    // Kept when the stack goes, taken away by a first deploy that rolls back.
    assert_eq!(id["DeletionPolicy"], "RetainExceptOnCreate");
    assert_eq!(id["UpdateReplacePolicy"], "Retain");
    assert_eq!(
        t["Conditions"]["OwnIdentity"],
        json!({ "Fn::Equals": [{ "Ref": "CreateDomainIdentity" }, "true"] })
    );
    for n in 1..=3 {
        let dkim = &r[format!("DkimRecord{n}")];
        assert_eq!(dkim["Condition"], "ManageDkimDns");
        assert_eq!(
            dkim["DeletionPolicy"], "RetainExceptOnCreate",
            "kept with the identity"
        );
    }
    assert_eq!(t["Outputs"]["DkimRecords"]["Condition"], "OwnIdentity");
    // Whatever uses the identity exists only with it.
    for section in ["Resources", "Outputs"] {
        for (name, v) in t[section].as_object().unwrap() {
            if name != "DomainIdentity" && v.to_string().contains("DomainIdentity") {
                assert!(
                    v["Condition"] == "OwnIdentity" || v["Condition"] == "ManageDkimDns",
                    "{name} uses the identity without its condition"
                );
            }
        }
    }
}

/// New stacks own no MX record set: every domain in use has one (the primary's), and
/// AWS::Route53::RecordSet fails on an existing set, where an UPSERT would replace it
/// and drop the primary's record; scripts/stack.py merges the standby's record instead
/// (tests/deploy.rs). The one MX set left is a stack's from an earlier version
/// (`LegacyMxRecordSet`): removing it would make CloudFormation delete the live set, so
/// it stays for them, retained.
#[test]
fn the_template_owns_no_mx_record_set() {
    let t = template();
    for (name, r) in t["Resources"].as_object().unwrap() {
        // The custom MAIL FROM subdomain's MX (sending) is a name of its own.
        let mail_from = r["Properties"]["Name"]
            .to_string()
            .contains("MailFromSubdomain");
        if r["Type"] == "AWS::Route53::RecordSet" && !mail_from && r["Properties"]["Type"] == "MX" {
            assert_eq!(name, "MxRecords");
            assert_eq!(r["Condition"], "LegacyMx", "{r}");
            assert_eq!(r["DeletionPolicy"], "Retain", "{r}");
            assert_eq!(r["UpdateReplacePolicy"], "Retain", "{r}");
        }
    }
    assert_eq!(t["Parameters"]["LegacyMxRecordSet"]["Default"], "false");
    assert!(
        t["Conditions"]["LegacyMx"]
            .to_string()
            .contains("LegacyMxRecordSet"),
        "{}",
        t["Conditions"]["LegacyMx"]
    );
}

/// Journal copies move to Glacier IR from 36 KB up: S3 moves nothing under 128 KB unless a
/// rule says so (most journal copies are smaller), and under about 34 KB Glacier IR's
/// 128 KB minimum charge and the transition fee cost more than Standard over the default
/// 7-year retention (the arithmetic is beside the rule).
#[test]
fn journal_copies_above_36_kb_move_to_glacier_ir() {
    let t = template();
    let rules = t["Resources"]["ArchiveBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
        .as_array()
        .unwrap();
    let cold = rules
        .iter()
        .find(|r| r["Id"] == "journal-to-cold")
        .expect("the transition rule");
    assert_eq!(cold["ObjectSizeGreaterThan"], json!(36864), "{cold}");
    assert_eq!(cold["Transitions"][0]["StorageClass"], "GLACIER_IR");
    assert_eq!(t["Parameters"]["JournalDays"]["Default"], json!(2555));
}

/// Alarms that arrive: CloudWatch cannot publish to a topic under the AWS managed key
/// `alias/aws/sns` (every alarm action failed), so the topic has no KMS key (a skip with
/// its reason for checkov); the probe alarm fires when 4 of 5 one-minute periods saw a
/// failed probe (one run a minute, each probe bounded by `[health] timeout_secs`), where
/// a sum of 5 in one 5-minute period missed a late run.
#[test]
fn alarms_can_reach_the_topic_and_fire_in_an_outage() {
    let t = template();
    let r = &t["Resources"];
    let topic = &r["AlarmTopic"];
    assert!(
        topic["Properties"].get("KmsMasterKeyId").is_none(),
        "CloudWatch cannot use the key of {}",
        topic["Properties"]
    );
    assert!(
        topic["Metadata"]["checkov"]["skip"]
            .to_string()
            .contains("CKV_AWS_26"),
        "{topic}"
    );
    let p = &r["ProbeFailureAlarm"]["Properties"];
    assert_eq!(
        (
            p["Period"].clone(),
            p["EvaluationPeriods"].clone(),
            p["DatapointsToAlarm"].clone(),
            p["Threshold"].clone()
        ),
        (json!(60), json!(5), json!(4), json!(1))
    );
    // Every alarm notifies the topic.
    for (name, res) in r.as_object().unwrap() {
        if res["Type"] == "AWS::CloudWatch::Alarm" {
            assert_eq!(
                res["Properties"]["AlarmActions"],
                json!([{ "Ref": "AlarmTopic" }]),
                "{name}"
            );
        }
    }
}

/// The emergency inbox's function: read-only on mail and users, writes only audit and
/// login-limit items; a public function URL that streams (a buffered URL stops at 6 MB,
/// messages are up to 40 MB), invocable only through that URL; its environment is a
/// configuration the web function accepts.
#[test]
fn the_web_function_reads_mail_stores_what_users_send_and_writes_nothing_else() {
    let t = template();
    let f = &t["Resources"];
    assert_eq!(
        policy_actions(&f["WebFunction"]),
        set(&[
            "dynamodb:BatchWriteItem",
            "dynamodb:DeleteItem",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:Query",
            "dynamodb:UpdateItem",
            "s3:DeleteObject",
            "s3:GetObject",
            "s3:ListBucket",
            "s3:PutObject",
            "secretsmanager:GetSecretValue",
            "ses:SendEmail",
            "ses:SendRawEmail",
        ])
    );
    let statements = f["WebFunction"]["Properties"]["Policies"][0]["Statement"]
        .as_array()
        .unwrap();
    // The sending statement is there only with sending enabled.
    let statements: Vec<&Value> = statements
        .iter()
        .map(|s| match s.get("Fn::If") {
            Some(arms) => {
                assert_eq!(arms[0], "Sending", "{s}");
                assert_eq!(arms[2], json!({ "Ref": "AWS::NoValue" }));
                &arms[1]
            }
            None => s,
        })
        .collect();
    for s in &statements {
        let actions = s["Action"].to_string();
        let keys = &s["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"];
        // Messages (what users send), audit entries, login limits: never health items.
        if actions.contains("PutItem") || actions.contains("UpdateItem") {
            assert!(
                [
                    json!(["audit#*"]),
                    json!(["limit#*"]),
                    json!(["msg#*"]),
                    json!(["mark#*"])
                ]
                .contains(keys),
                "{s}"
            );
        }
        if actions.contains("BatchWriteItem") || actions.contains("DeleteItem") {
            assert_eq!(keys, &json!(["msg#*", "rcpt#*"]), "{s}");
        }
        let resource = s["Resource"].to_string();
        // Create-only where messages are; the uploads are the page's own.
        if actions.contains("s3:PutObject") && resource.contains("/serve/") {
            assert_eq!(s["Condition"]["Null"]["s3:if-none-match"], "false", "{s}");
        }
        if actions.contains("s3:PutObject") || actions.contains("s3:DeleteObject") {
            assert!(
                resource.contains("/serve/*") || resource.contains("/uploads/*"),
                "{s}"
            );
            assert!(!resource.contains("incoming/"), "{s}");
        }
        if actions.contains("ses:") {
            assert_eq!(
                s["Resource"]["Fn::Sub"][1]["Domain"],
                json!({ "Fn::Select": [0, { "Ref": "DomainNames" }] }),
                "{s}"
            );
        }
    }
    assert_eq!(standby::backend::aws::limits::LIMIT_PREFIX, "limit#");
    let url = &f["WebFunctionUrl"]["Properties"];
    assert_eq!(url["InvokeMode"], "RESPONSE_STREAM");
    assert_eq!(url["AuthType"], "NONE");
    let permissions: Vec<(&Value, &Value)> = ["WebUrlPermission", "WebInvokePermission"]
        .iter()
        .map(|p| (&f[p]["Properties"]["Action"], &f[p]["Properties"]))
        .collect();
    assert_eq!(permissions[0].0, "lambda:InvokeFunctionUrl");
    assert_eq!(permissions[0].1["FunctionUrlAuthType"], "NONE");
    assert_eq!(permissions[1].0, "lambda:InvokeFunction");
    assert_eq!(permissions[1].1["InvokedViaFunctionUrl"], true);
    assert_eq!(
        t["Outputs"]["WebUrl"]["Value"],
        json!({ "Fn::GetAtt": "WebFunctionUrl.FunctionUrl" })
    );
    // Its variables are settings (or the one its session_key_env names).
    let vars = f["WebFunction"]["Properties"]["Environment"]["Variables"]
        .as_object()
        .unwrap();
    let env: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| {
            // What a parameter reference (`!Ref RetentionDays`) stands for.
            let placeholder = if k.ends_with("_DAYS") {
                "30"
            } else if k == "STANDBY_OUTBOUND_MODE" {
                "ses"
            } else if k == "STANDBY_USERS_ADMINS" {
                "admin@example.test"
            } else if k == "STANDBY_PRIMARY_ADDRESS" {
                "mail.example.test:25"
            } else {
                "example.test"
            };
            (k.clone(), v.as_str().unwrap_or(placeholder).to_string())
        })
        .collect();
    let config = standby::config::Config::from_parts(
        std::path::Path::new("(template)"),
        "backend = \"aws\"\nhostname = \"w.invalid\"\n[primary]\naddress = \"x.invalid\"\n",
        env,
    )
    .expect("the web function's environment is a configuration");
    assert_eq!(
        config.web.session_key_env.as_deref(),
        Some("STANDBY_WEB_SESSION_SECRET")
    );
    assert_eq!(
        vars["STANDBY_OUTBOUND_MODE"],
        json!({ "Fn::If": ["Sending", "ses", ""] })
    );
    assert_eq!(
        config.outbound.mode,
        Some(standby::config::OutboundMode::Ses)
    );
    // The page PUTs attachments from the function URL's origin; what a closed tab
    // left under uploads/ expires.
    let bucket = &f["MailBucket"]["Properties"];
    let cors = &bucket["CorsConfiguration"]["CorsRules"][0];
    assert_eq!(cors["AllowedMethods"], json!(["PUT"]));
    let rules = bucket["LifecycleConfiguration"]["Rules"]
        .as_array()
        .unwrap();
    let uploads = rules
        .iter()
        .find(|r| r["Prefix"] == "uploads/")
        .expect("a lifecycle rule for uploads/");
    assert_eq!(uploads["ExpirationInDays"], 1);
}

/// The CloudWatch dashboard draws what the drain writes: its metric widgets only
/// declared metrics, its log widgets only fields of the drain's EMF object.
#[test]
fn the_cloudwatch_dashboard_draws_what_the_drain_writes() {
    let t = template();
    let body = t["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
        .as_str()
        .expect("a DashboardBody with !Sub");
    let body = body
        .replace("${AWS::Region}", "eu-west-1")
        .replace("${AWS::StackName}", "standby-prod")
        .replace("${DrainLogs}", "/aws/lambda/standby-drain")
        .replace("${DrainFunction}", "standby-drain");
    let d: Value = serde_json::from_str(&body).expect("the dashboard body is JSON");
    let declared = standby::lambda::metrics::declared();
    let summary = standby::lambda::drain::DrainSummary::default();
    let emf = standby::lambda::metrics::emf(&summary, "s", chrono::Utc::now());
    let widgets = d["widgets"].as_array().unwrap();
    assert!(widgets.len() >= 6);
    for w in widgets {
        let p = &w["properties"];
        match w["type"].as_str().unwrap() {
            "metric" => {
                for m in p["metrics"].as_array().unwrap() {
                    let (ns, name) = (m[0].as_str().unwrap(), m[1].as_str().unwrap());
                    match ns {
                        "StandbyMx" => assert!(declared.contains(&name.to_string()), "{name}"),
                        "AWS/Lambda" => {}
                        other => panic!("a metric of {other}"),
                    }
                }
            }
            "log" => {
                let q = p["query"].as_str().unwrap();
                for field in q
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .filter(|w| w.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
                    // Keywords (SOURCE) are in capitals; fields in CamelCase.
                    .filter(|w| w.chars().any(|c| c.is_ascii_lowercase()))
                {
                    assert!(
                        emf.get(field).is_some(),
                        "{q}: {field} is not in the drain's output"
                    );
                }
            }
            other => panic!("a widget of type {other}"),
        }
    }
}
