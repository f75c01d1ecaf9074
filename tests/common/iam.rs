//! Every AWS request made in the tests by a function, a `standby serve` node or the
//! operator's `standby` command, checked against that principal's policy in
//! `infra/template.yaml`.
//!
//! moto evaluates no IAM policy: a call the template does not allow passes every test and
//! fails on the first day in a real account (the ingest function's HeadObject on a missing
//! key once answered 403 there, for want of `s3:ListBucket`). So each principal talks to
//! moto with an access key of its own ([`Principal::key`]), moto logs every request with
//! what a policy can see of it (`scripts/moto-server --log`: action, resource, condition
//! keys, the status), and [`check`] evaluates each logged request of a principal against
//! its statements, as IAM's identity-policy evaluation does for one account: allowed only
//! when an `Allow` statement matches the action, the resource and every condition. Requests
//! under other keys are the tests' own setup and are not checked.
//!
//! Beyond the plain action, a request needs what S3 documents: a GET or HEAD of a missing
//! key answers 404 only with `s3:ListBucket` on the bucket (else 403), so a logged 404 also
//! needs ListBucket; a PutObject with Object Lock headers also needs
//! `s3:PutObjectRetention` / `s3:PutObjectLegalHold`, with a tagging header
//! `s3:PutObjectTagging`; a request naming a version needs the `...Version` action.
//! Conditions: the operators and keys the template uses (`StringLike`, `StringEquals`,
//! `ForAllValues:StringLike`, `Null`; `dynamodb:LeadingKeys`, `s3:prefix`,
//! `s3:if-none-match`); any other makes the check fail until it is taught here. Bucket
//! policies (TLS only, SES's puts) are resource policies for other principals and are not
//! evaluated; no general IAM engine is attempted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

/// The access key of the tests' own requests (making buckets, seeding, looking), which
/// no policy covers.
pub const SETUP_KEY: &str = "testing";

const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";

/// Who makes a request, by the access key id it signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// `standby-ingest`: the IngestFunction's inline policies.
    Ingest,
    /// `standby-drain`: the DrainFunction's inline policies.
    Drain,
    /// `standby serve` with `backend = "aws"`: ServeNodePolicy.
    Serve,
    /// The `standby` command with the standby.toml `scripts/deploy` writes: OperatorPolicy.
    Operator,
    /// `standby-web`: the WebFunction's inline policies.
    Web,
}

impl Principal {
    pub const ALL: [Principal; 5] = [
        Principal::Ingest,
        Principal::Drain,
        Principal::Serve,
        Principal::Operator,
        Principal::Web,
    ];

    /// The access key id this principal signs with in the tests.
    pub fn key(self) -> &'static str {
        match self {
            Principal::Ingest => "role-ingest-function",
            Principal::Drain => "role-drain-function",
            Principal::Serve => "role-serve-node",
            Principal::Operator => "role-operator",
            Principal::Web => "role-web-function",
        }
    }

    fn by_key(key: &str) -> Option<Principal> {
        Self::ALL.into_iter().find(|p| p.key() == key)
    }

    /// The template resource whose policy applies.
    fn resource(self) -> &'static str {
        match self {
            Principal::Ingest => "IngestFunction",
            Principal::Drain => "DrainFunction",
            Principal::Serve => "ServeNodePolicy",
            Principal::Operator => "OperatorPolicy",
            Principal::Web => "WebFunction",
        }
    }

    /// The principal's statements, every optional one (`!If [Has..., statement,
    /// AWS::NoValue]`) included: the tests configure each feature somewhere, and a
    /// statement of an unconfigured feature matches no request of theirs.
    pub fn statements(self, template: &Value) -> Vec<Value> {
        let r = &template["Resources"][self.resource()];
        assert!(
            r.is_object(),
            "infra/template.yaml has no {}",
            self.resource()
        );
        let docs: Vec<&Value> = match r["Type"].as_str() {
            Some("AWS::Serverless::Function") => r["Properties"]["Policies"]
                .as_array()
                .unwrap()
                .iter()
                .collect(),
            Some("AWS::IAM::ManagedPolicy") => vec![&r["Properties"]["PolicyDocument"]],
            other => panic!("{}: no policy in a {other:?}", self.resource()),
        };
        let mut out = Vec::new();
        for doc in docs {
            let list = doc["Statement"].as_array().unwrap_or_else(|| {
                panic!("{}: only inline policy documents: {doc}", self.resource())
            });
            for s in list {
                flatten(s, &mut out);
            }
        }
        out
    }
}

fn flatten(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(m) if m.contains_key("Fn::If") => {
            let arms = m["Fn::If"].as_array().unwrap();
            flatten(&arms[1], out);
            flatten(&arms[2], out);
        }
        Value::Object(m) if m.get("Ref") == Some(&Value::String("AWS::NoValue".into())) => {}
        Value::Object(_) => out.push(v.clone()),
        other => panic!("a statement that is not an object: {other}"),
    }
}

/// One permission a request needs: action, resource ARN, the condition keys it carries.
#[derive(Debug, Clone)]
pub struct Need {
    pub action: String,
    pub resource: String,
    pub context: BTreeMap<String, Vec<String>>,
}

/// The names the tests gave the template's resources, read from the log: buckets created
/// with Object Lock are archive buckets, the others mail buckets; every table is the index
/// table.
#[derive(Debug, Default)]
pub struct Names {
    pub mail_buckets: BTreeSet<String>,
    pub archive_buckets: BTreeSet<String>,
    pub tables: BTreeSet<String>,
}

impl Names {
    pub fn from_log(lines: &[Value]) -> Names {
        let mut n = Names::default();
        for l in lines {
            let resource = l["resource"].as_str().unwrap_or_default();
            match (l["service"].as_str(), l["op"].as_str()) {
                (Some("s3"), Some("CreateBucket")) => {
                    if l["context"]["object_lock"] == true {
                        n.archive_buckets.insert(resource.to_string());
                    } else {
                        n.mail_buckets.insert(resource.to_string());
                    }
                }
                (Some("dynamodb"), Some("CreateTable")) => {
                    n.tables.insert(resource.to_string());
                }
                _ => {}
            }
        }
        n
    }

    /// The values a reference stands for (`MailBucket.Arn`, `Ref IndexTable`, ...).
    fn resolve(&self, name: &str) -> Vec<String> {
        let s3 = |set: &BTreeSet<String>| set.iter().map(|b| format!("arn:aws:s3:::{b}")).collect();
        match name {
            "MailBucket.Arn" => s3(&self.mail_buckets),
            "ArchiveBucket.Arn" => s3(&self.archive_buckets),
            "MailBucket" => self.mail_buckets.iter().cloned().collect(),
            "ArchiveBucket" => self.archive_buckets.iter().cloned().collect(),
            "IndexTable.Arn" => self
                .tables
                .iter()
                .map(|t| format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{t}"))
                .collect(),
            "IndexTable" => self.tables.iter().cloned().collect(),
            // One queue, one secret, one function, one topic per stack; the tests name
            // theirs freely.
            "IngestFailures.Arn" => vec![format!("arn:aws:sqs:{REGION}:{ACCOUNT}:*")],
            "PrimarySecretArn" | "WebSessionKey" => vec![format!(
                "arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:*"
            )],
            "DrainFunction.Arn" | "DrainFunction" => {
                vec![format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:*")]
            }
            "AlarmTopic" => vec![format!("arn:aws:sns:{REGION}:{ACCOUNT}:*")],
            // The standby's domains: the tests' is example.test.
            "DomainNames" => vec!["example.test".into()],
            "AWS::Partition" => vec!["aws".into()],
            "AWS::Region" => vec![REGION.into()],
            "AWS::AccountId" => vec![ACCOUNT.into()],
            "AWS::StackName" => vec!["*".into()],
            other => panic!(
                "tests/common/iam.rs does not know what `{other}` names in a policy: add it to Names::resolve"
            ),
        }
    }

    /// Every ARN pattern a `Resource` entry stands for.
    fn patterns(&self, v: &Value) -> Vec<String> {
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items.iter().flat_map(|i| self.patterns(i)).collect(),
            Value::Object(m) if m.contains_key("Ref") => self.resolve(m["Ref"].as_str().unwrap()),
            Value::Object(m) if m.contains_key("Fn::GetAtt") => {
                let name = match &m["Fn::GetAtt"] {
                    Value::String(s) => s.clone(),
                    Value::Array(parts) => format!(
                        "{}.{}",
                        parts[0].as_str().unwrap(),
                        parts[1].as_str().unwrap()
                    ),
                    other => panic!("odd GetAtt {other}"),
                };
                self.resolve(&name)
            }
            Value::Object(m) if m.contains_key("Fn::Sub") => {
                let (text, vars) = match &m["Fn::Sub"] {
                    Value::String(s) => (s.clone(), serde_json::Map::new()),
                    Value::Array(parts) => (
                        parts[0].as_str().unwrap().to_string(),
                        parts[1].as_object().unwrap().clone(),
                    ),
                    other => panic!("odd Sub {other}"),
                };
                let mut out = vec![String::new()];
                let mut rest = text.as_str();
                while let Some(start) = rest.find("${") {
                    let end = rest[start..].find('}').expect("a closed ${") + start;
                    let name = &rest[start + 2..end];
                    let values = match vars.get(name) {
                        Some(v) => self.patterns(v),
                        None => self.resolve(name),
                    };
                    let literal = &rest[..start];
                    out = out
                        .iter()
                        .flat_map(|o| values.iter().map(move |v| format!("{o}{literal}{v}")))
                        .collect();
                    rest = &rest[end + 1..];
                }
                out.into_iter().map(|o| o + rest).collect()
            }
            Value::Object(m) if m.contains_key("Fn::Select") => {
                let args = m["Fn::Select"].as_array().unwrap();
                vec![self.patterns(&args[1])[args[0].as_u64().unwrap_or(0) as usize].clone()]
            }
            other => panic!("a Resource tests/common/iam.rs cannot resolve: {other}"),
        }
    }
}

/// IAM's `*` and `?` wildcards.
fn glob(pattern: &str, value: &str) -> bool {
    fn go(p: &[char], v: &[char]) -> bool {
        match (p.first(), v.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], v) || (!v.is_empty() && go(p, &v[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &v[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &v[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    go(&p, &v)
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        Value::Bool(b) => vec![b.to_string()],
        other => panic!("a condition value that is not a string: {other}"),
    }
}

/// Whether one statement's `Condition` block holds for a request's context.
fn conditions_hold(condition: &Value, context: &BTreeMap<String, Vec<String>>) -> bool {
    let Some(ops) = condition.as_object() else {
        return true;
    };
    ops.iter().all(|(op, keys)| {
        keys.as_object()
            .unwrap_or_else(|| panic!("condition {op}: {keys}"))
            .iter()
            .all(|(key, want)| {
                let key_lc = key.to_ascii_lowercase();
                assert!(
                    ["dynamodb:leadingkeys", "s3:prefix", "s3:if-none-match"].contains(&key_lc.as_str()),
                    "tests/common/iam.rs does not know the condition key {key}: teach it what requests carry"
                );
                let have = context.get(&key_lc);
                let want = strings(want);
                let like = |v: &String| want.iter().any(|w| glob(w, v));
                match op.as_str() {
                    "StringLike" => have.is_some_and(|h| !h.is_empty() && h.iter().any(like)),
                    "StringEquals" => {
                        have.is_some_and(|h| !h.is_empty() && h.iter().any(|v| want.contains(v)))
                    }
                    // IAM: ForAllValues is true for a request without the key.
                    "ForAllValues:StringLike" => have.is_none_or(|h| h.iter().all(like)),
                    "Null" => {
                        let absent = have.is_none_or(|h| h.is_empty());
                        match want.as_slice() {
                            [w] if w == "true" => absent,
                            [w] if w == "false" => !absent,
                            _ => panic!("Null takes true or false: {want:?}"),
                        }
                    }
                    other => panic!(
                        "tests/common/iam.rs does not evaluate the condition operator {other}: teach it"
                    ),
                }
            })
    })
}

/// Whether `statements` allow `need`.
pub fn allows(statements: &[Value], names: &Names, need: &Need) -> bool {
    statements.iter().any(|s| {
        assert_eq!(
            s["Effect"], "Allow",
            "identity policies here only allow: {s}"
        );
        let actions = strings(&s["Action"]);
        let action_ok = actions
            .iter()
            .any(|a| glob(&a.to_ascii_lowercase(), &need.action.to_ascii_lowercase()));
        action_ok
            && names
                .patterns(&s["Resource"])
                .iter()
                .any(|r| glob(r, &need.resource))
            && conditions_hold(&s["Condition"], &need.context)
    })
}

/// The permissions one logged request needs.
pub fn needs(line: &Value) -> Vec<Need> {
    let service = line["service"].as_str().unwrap_or_default();
    let op = line["op"].as_str().unwrap_or_default();
    let resource = line["resource"].as_str().unwrap_or_default();
    let ctx = &line["context"];
    let status = line["status"].as_u64().unwrap_or(0);
    let need = |action: &str, resource: String, context: &[(&str, Vec<String>)]| Need {
        action: action.to_string(),
        resource,
        context: context
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
    };
    let flag = |name: &str| ctx[name] == true;
    match service {
        "s3" => {
            let bucket = resource.split('/').next().unwrap_or_default();
            let bucket_arn = format!("arn:aws:s3:::{bucket}");
            let object_arn = format!("arn:aws:s3:::{resource}");
            // The action for a request naming a version: s3:GetObjectVersion,
            // s3:GetObjectVersionTagging, s3:DeleteObjectVersion, ...
            let versioned = |a: &str| match (flag("version"), a.strip_suffix("Tagging")) {
                (false, _) => a.to_string(),
                (true, Some(verb)) => format!("{verb}VersionTagging"),
                (true, None) => format!("{a}Version"),
            };
            let prefix: Vec<(&str, Vec<String>)> = ctx["prefix"]
                .as_str()
                .map(|p| vec![("s3:prefix", vec![p.to_string()])])
                .unwrap_or_default();
            let mut out = match op {
                "GetObject" | "HeadObject" => {
                    vec![need(&versioned("s3:GetObject"), object_arn, &[])]
                }
                "GetObjectTagging" | "PutObjectTagging" | "DeleteObjectTagging" => {
                    vec![need(&versioned(&format!("s3:{op}")), object_arn, &[])]
                }
                "DeleteObject" => vec![need(&versioned("s3:DeleteObject"), object_arn, &[])],
                "PutObjectLegalHold" | "GetObjectLegalHold" | "PutObjectRetention"
                | "GetObjectRetention" => vec![need(&format!("s3:{op}"), object_arn, &[])],
                "PutObject" | "CopyObject" => {
                    let inm: Vec<(&str, Vec<String>)> = if flag("if_none_match") {
                        vec![("s3:if-none-match", vec!["*".into()])]
                    } else {
                        vec![]
                    };
                    let mut v = vec![need("s3:PutObject", object_arn.clone(), &inm)];
                    if flag("retention") {
                        v.push(need("s3:PutObjectRetention", object_arn.clone(), &[]));
                    }
                    if flag("legal_hold") {
                        v.push(need("s3:PutObjectLegalHold", object_arn.clone(), &[]));
                    }
                    if flag("tagging") {
                        v.push(need("s3:PutObjectTagging", object_arn.clone(), &[]));
                    }
                    if let Some(source) = ctx["copy_source"].as_str() {
                        v.push(need("s3:GetObject", format!("arn:aws:s3:::{source}"), &[]));
                    }
                    v
                }
                "ListObjectsV2" | "ListObjects" => {
                    vec![need("s3:ListBucket", bucket_arn.clone(), &prefix)]
                }
                "ListObjectVersions" => {
                    vec![need("s3:ListBucketVersions", bucket_arn.clone(), &prefix)]
                }
                // HeadBucket is authorized by s3:ListBucket (S3 API reference, HeadBucket).
                "HeadBucket" => vec![need("s3:ListBucket", bucket_arn.clone(), &[])],
                "GETBucket?versioning" => {
                    vec![need("s3:GetBucketVersioning", bucket_arn.clone(), &[])]
                }
                "GETBucket?publicAccessBlock" => {
                    vec![need(
                        "s3:GetBucketPublicAccessBlock",
                        bucket_arn.clone(),
                        &[],
                    )]
                }
                "GETBucket?object-lock" => {
                    vec![need(
                        "s3:GetBucketObjectLockConfiguration",
                        bucket_arn.clone(),
                        &[],
                    )]
                }
                "CreateBucket" | "DeleteBucket" => {
                    vec![need(&format!("s3:{op}"), bucket_arn.clone(), &[])]
                }
                other => vec![need(
                    &format!("unmapped S3 request {other}"),
                    object_arn,
                    &[],
                )],
            };
            // S3: without s3:ListBucket a missing key answers 403, not 404 (S3 API
            // reference, GetObject and HeadObject, "Permissions").
            if status == 404 && resource.contains('/') {
                out.push(need("s3:ListBucket", bucket_arn, &[]));
            }
            out
        }
        "dynamodb" => {
            let keys: Vec<String> = strings_or_empty(&ctx["leading_keys"]);
            // DynamoDB evaluates dynamodb:LeadingKeys for every item request; a logged one
            // without them was not understood, and ForAllValues would let it pass.
            let item_ops = [
                "GetItem",
                "PutItem",
                "UpdateItem",
                "DeleteItem",
                "BatchWriteItem",
            ];
            let count = |v: &Value| v.as_array().map_or(0, Vec::len);
            if item_ops.contains(&op)
                && (keys.is_empty() || count(&ctx["leading_keys"]) != keys.len())
            {
                return vec![need(
                    &format!("DynamoDB {op} without its partition keys in the log"),
                    resource.to_string(),
                    &[],
                )];
            }
            let table_arn = |t: &str| {
                let t = t.split(' ').next().unwrap_or_default();
                match t.split_once('/') {
                    Some((table, index)) => {
                        format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{table}/index/{index}")
                    }
                    None => format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{t}"),
                }
            };
            // A transaction: each of its actions as the item operation it is, on its item.
            if op == "TransactWriteItems" || op == "TransactGetItems" {
                let parts = ctx["transact"].as_array().cloned().unwrap_or_default();
                if parts.is_empty() {
                    return vec![need(
                        &format!("DynamoDB {op} without its actions in the log"),
                        resource.to_string(),
                        &[],
                    )];
                }
                return parts
                    .iter()
                    .map(|p| {
                        let action = p["op"].as_str().unwrap_or("unknown");
                        match (p["table"].as_str(), p["key"].as_str()) {
                            (Some(table), Some(key)) => need(
                                &format!("dynamodb:{action}"),
                                table_arn(table),
                                &[("dynamodb:LeadingKeys", vec![key.to_string()])],
                            ),
                            _ => need(
                                &format!(
                                    "DynamoDB {op} action {action} without its key in the log"
                                ),
                                resource.to_string(),
                                &[],
                            ),
                        }
                    })
                    .collect();
            }
            let lk = [("dynamodb:LeadingKeys", keys)];
            let tables = if op == "BatchWriteItem" {
                strings_or_empty(&ctx["tables"])
            } else {
                vec![resource.to_string()]
            };
            tables
                .iter()
                .map(|t| need(&format!("dynamodb:{op}"), table_arn(t), &lk))
                .collect()
        }
        "sqs" => {
            let queue = resource.rsplit('/').next().unwrap_or_default();
            let action = op.trim_end_matches("Batch");
            vec![need(
                &format!("sqs:{action}"),
                format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}"),
                &[],
            )]
        }
        "secretsmanager" => {
            let arn = if resource.starts_with("arn:") {
                resource.to_string()
            } else {
                format!("arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{resource}")
            };
            vec![need(&format!("secretsmanager:{op}"), arn, &[])]
        }
        // SESv2 SendEmail with raw content is authorised as both actions.
        "ses" if op == "SendEmail" => ["ses:SendEmail", "ses:SendRawEmail"]
            .iter()
            .map(|a| {
                need(
                    a,
                    format!("arn:aws:ses:{REGION}:{ACCOUNT}:identity/{resource}"),
                    &[],
                )
            })
            .collect(),
        "lambda" => vec![need(
            "lambda:InvokeFunction",
            format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{resource}"),
            &[],
        )],
        _ => {
            let r = if resource.is_empty() { "*" } else { resource };
            vec![need(&format!("{service}:{op}"), r.to_string(), &[])]
        }
    }
}

fn strings_or_empty(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Every request in moto's log `lines` made under a principal's key that its policy
/// does not allow, one line each (empty when all are allowed).
pub fn denied(template: &Value, lines: &[Value]) -> Vec<String> {
    let names = Names::from_log(lines);
    let mut out = Vec::new();
    // Every request is someone's: the tests' own or a principal's, and understood.
    for l in lines {
        let key = l["key"].as_str().unwrap_or_default();
        let op = l["op"].as_str().unwrap_or_default();
        // A browser's CORS preflight carries no signature by design (the bucket's CORS
        // rules answer it, no policy).
        if key.is_empty() && op.starts_with("OPTIONS ") {
            continue;
        }
        if key != SETUP_KEY && Principal::by_key(key).is_none() {
            out.push(format!("a request signed with an unknown key {key:?}: {l}"));
        } else if op.starts_with("unparsed") {
            out.push(format!("a request the log could not describe: {l}"));
        }
    }
    for p in Principal::ALL {
        let statements = p.statements(template);
        for l in lines.iter().filter(|l| l["key"] == p.key()) {
            for n in needs(l) {
                if !allows(&statements, &names, &n) {
                    out.push(format!(
                        "{p:?} ({}): {} on {} {:?} (request: {} {} {}, status {})",
                        p.resource(),
                        n.action,
                        n.resource,
                        n.context,
                        l["service"].as_str().unwrap_or_default(),
                        l["op"].as_str().unwrap_or_default(),
                        l["resource"].as_str().unwrap_or_default(),
                        l["status"],
                    ));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// moto's request log at `path`, as JSON lines.
pub fn read_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| {
            panic!(
                "moto's request log {}: {e} (scripts/moto-server --log writes it on the first request)",
                path.display()
            )
        })
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line in moto's request log"))
        .collect()
}

/// Panics, naming each request, when a principal made one its policy does not allow.
pub fn check(log: &Path) {
    let lines = read_log(log);
    let denied = denied(&super::template::template(), &lines);
    assert!(
        denied.is_empty(),
        "requests infra/template.yaml does not allow (a real account answers them 403; see tests/common/iam.rs):\n  {}",
        denied.join("\n  ")
    );
}
