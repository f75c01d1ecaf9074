//! `scripts/deploy` and `scripts/destroy`: what they plan (dry runs need no AWS), how a
//! recipients file becomes the receipt rules' parameters, and the after-deploy steps
//! (`scripts/stack.py after-deploy`) against moto, ending in a `standby doctor` that
//! passes on the config it wrote.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::aws::{Moto, child_env, require_venv_tool, standby_cli};
use common::dns::Dns;
use common::{FakePrimary, FakeReply, repo};

fn script(name: &str, args: &[&str]) -> Output {
    Command::new(repo().join("scripts").join(name))
        .args(args)
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The `--parameter-overrides` of the planned `sam deploy`, as (key, value).
fn overrides(plan: &str) -> Vec<(String, String)> {
    let line = plan.lines().find(|l| l.contains("sam deploy")).unwrap();
    let after = line.split("--parameter-overrides ").nth(1).unwrap();
    let after = after.trim_end_matches(')');
    after
        .split("\" ")
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

fn write(dir: &Path, name: &str, lines: impl Iterator<Item = String>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, lines.collect::<Vec<_>>().join("\n")).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_recipients_file_is_split_over_the_receipt_rules() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "r.txt",
        std::iter::once("# the sales team".to_string())
            .chain((1..=250).map(|n| format!("user{n}@example.com")))
            .chain(["USER1@example.com".into(), "example.org".into()]),
    );
    let out = script(
        "deploy",
        &[
            "--dry-run",
            "--region",
            "eu-west-1",
            "--domains",
            "example.com,example.org",
            "--primary",
            "mail.example.com",
            "--recipients",
            &file,
        ],
    );
    let (plan, err) = text(&out);
    assert!(out.status.success(), "{plan}{err}");
    assert!(plan.contains("dry run, nothing changed"));
    let o = overrides(&plan);
    let get = |k: &str| {
        o.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} in {o:?}"))
    };
    let count = |k: &str| get(k).split(',').filter(|s| !s.is_empty()).count();
    // 251 distinct conditions (USER1 is user1): 100 + 100 + 51, in file order.
    assert_eq!(
        [
            count("Recipients"),
            count("Recipients2"),
            count("Recipients3")
        ],
        [100, 100, 51]
    );
    assert_eq!(get("Recipients4"), "");
    assert!(get("Recipients").starts_with("user1@example.com,user2@example.com,"));
    assert!(get("Recipients3").ends_with("user250@example.com,example.org"));
    assert_eq!(get("DomainNames"), "example.com,example.org");
    assert_eq!(get("Architecture"), "x86_64");
    assert!(plan.contains("--guided"), "first deploy is guided: {plan}");
    // A re-run with no changes goes on to the after-deploy steps.
    assert!(plan.contains("--no-fail-on-empty-changeset"), "{plan}");
}

#[test]
fn bad_input_is_refused_with_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.txt",
        ["alice@example.com", "", "bob at example.com"]
            .iter()
            .map(|s| s.to_string()),
    );
    let out = script(
        "deploy",
        &["--dry-run", "--region", "us-east-1", "--recipients", &bad],
    );
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains(&format!("{bad}:3: `bob at example.com` is not an address")),
        "{err}"
    );

    let many = write(
        dir.path(),
        "many.txt",
        (1..=401).map(|n| format!("u{n}@example.com")),
    );
    let out = script(
        "deploy",
        &["--dry-run", "--region", "us-east-1", "--recipients", &many],
    );
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("401 recipients") && err.contains("at most 400"),
        "{err}"
    );

    let out = script("deploy", &["--dry-run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--region is required"));
    let out = script("deploy", &["--dry-run", "--region", "x", "--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("unknown option --frobnicate"));
    // Receipt rules are named <stack>-journal and SES takes 64 characters at most.
    for bad in ["x".repeat(57).as_str(), "1mx", "mx_2"] {
        let out = script(
            "deploy",
            &["--dry-run", "--region", "x", "--stack-name", bad],
        );
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(text(&out).1.contains("at most 56 characters"), "{bad}");
    }
    let (plan, _) = text(&script(
        "deploy",
        &[
            "--dry-run",
            "--region",
            "us-east-1",
            "--stack-name",
            &"x".repeat(56),
        ],
    ));
    assert!(plan.contains("sam deploy"), "{plan}");
}

#[test]
fn destroy_keeps_the_mail_unless_told() {
    let (plan, _) = text(&script("destroy", &["--dry-run", "--region", "us-east-1"]));
    assert!(plan.contains("keep the mail bucket"), "{plan}");
    assert!(!plan.contains("DELETE"));
    let (plan, _) = text(&script(
        "destroy",
        &["--dry-run", "--region", "us-east-1", "--delete-bucket"],
    ));
    assert!(plan.contains("DELETE the mail bucket"), "{plan}");
    // Without --yes and without a terminal, nothing happens.
    let out = Command::new(repo().join("scripts/destroy"))
        .args(["--region", "us-east-1"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).0.contains("nothing changed"));
}

/// Bucket and table `name` in moto, made by `standby aws-init` as the stack would have them.
fn aws_init(moto: &Moto, dir: &Path, name: &str) {
    let seed = dir.join("seed.toml");
    std::fs::write(
        &seed,
        format!(
            "backend = \"aws\"\nbucket = \"{name}\"\ntable = \"{name}\"\n\
             hostname = \"standby.example.test\"\n[primary]\naddress = \"127.0.0.1:25\"\n"
        ),
    )
    .unwrap();
    let out = standby_cli(moto, &seed, &["aws-init"], &[]);
    let (said, err) = text(&out);
    assert!(out.status.success(), "aws-init: {said}{err}");
}

/// `scripts/stack.py after-deploy` for the stand-in stack, with no terminal to ask.
fn after_deploy(moto: &Moto, config: &Path, extra: &[&str]) -> Output {
    Command::new(require_venv_tool("python"))
        .arg(repo().join("scripts/stack.py"))
        .args([
            "after-deploy",
            "--stack",
            "standby-mx",
            "--region",
            "us-east-1",
        ])
        .arg("--config-out")
        .arg(config)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .envs(child_env(moto))
        .output()
        .unwrap()
}

#[test]
fn after_deploy_activates_verifies_and_writes_a_config_doctor_accepts() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let primary = FakePrimary::start(vec![FakeReply::Healthy; 8]);
    // Bucket and table as the stack would have them, then the SES rule set (inactive,
    // as CloudFormation leaves it) and a stand-in stack with our outputs.
    aws_init(&moto, dir.path(), "standby-mail");
    let port = primary.port.to_string();
    let out = Command::new(require_venv_tool("python"))
        .arg(repo().join("tests/fixtures/ses-setup.py"))
        .args([moto.url.as_str(), "standby-mail", "example.test"])
        .args([
            "--no-activate",
            "--stack",
            "standby-mx",
            "--also",
            "example.org",
        ])
        .args(["--primary-port", &port])
        .envs(child_env(&moto))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let config = dir.path().join("standby.toml");
    let out = after_deploy(&moto, &config, &["--yes"]);
    let (said, err) = text(&out);
    assert!(out.status.success(), "{said}{err}");
    assert!(
        said.contains("activated receipt rule set standby-mx"),
        "{said}"
    );
    assert!(
        said.contains("example.test. MX 20 inbound-smtp.us-east-1.amazonaws.com."),
        "{said}"
    );
    assert!(
        said.contains("._domainkey.example.org. CNAME"),
        "the second domain's DKIM records: {said}"
    );
    assert!(said.contains("SES identity example.org: Success"), "{said}");
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.contains("backend = \"aws\""), "{written}");
    assert!(written.contains("bucket = \"standby-mail\""), "{written}");
    // `standby user add bob` names bob@ the first domain, as the web function does.
    assert!(
        written.contains("[users]\ndefault_domain = \"example.test\""),
        "{written}"
    );
    assert!(
        written.contains(&format!("address = \"127.0.0.1:{port}\"")),
        "{written}"
    );

    // Run again: the set is already active and the config unchanged; nothing is asked.
    let out = after_deploy(&moto, &config, &[]);
    let (said, err) = text(&out);
    assert!(out.status.success(), "{said}{err}");
    assert!(
        said.contains("receipt rule set standby-mx is active"),
        "{said}"
    );

    // The operator's config works: doctor passes the SES and storage checks on it.
    // A good setup publishes TLS-RPT (doctor warns without it).
    let dns = Dns::start_with(
        &[
            ("example.test", 10, "mx1.example.test"),
            ("example.test", 20, "inbound-smtp.us-east-1.amazonaws.com"),
            ("example.org", 10, "mx1.example.org"),
            ("example.org", 20, "inbound-smtp.us-east-1.amazonaws.com"),
        ],
        &[
            (
                "_smtp._tls.example.test",
                "v=TLSRPTv1; rua=mailto:tls@example.test",
            ),
            (
                "_smtp._tls.example.org",
                "v=TLSRPTv1; rua=mailto:tls@example.org",
            ),
        ],
    );
    let out = standby_cli(
        &moto,
        &config,
        &["doctor", "--json", "--nameserver", &dns.addr()],
        &[],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    for c in report["checks"].as_array().unwrap() {
        // A new account is in the SES sandbox: worth a warning while this config does
        // not send through SES.
        if c["name"] == "ses sending" {
            assert_eq!(c["verdict"], "warn", "{c}");
            assert!(c["detail"].as_str().unwrap().contains("sandbox"), "{c}");
        } else if c["name"] != "bucket" && c["name"] != "primary health" {
            assert_eq!(c["verdict"], "pass", "{c}");
        }
    }
}

/// `scripts/stack.py` pieces that moto cannot run (it has no SES receipt filters), with a
/// stand-in SES client: each IPv4 network of `JournalAllow` gets an Allow receipt filter
/// named `<stack>-j<n>` (SES blocks mail from Amazon EC2 addresses unless a filter allows
/// them, and a primary journaling from EC2 would be refused), IPv6 entries are said and
/// skipped, filters of ours no longer listed are removed, others' are left alone. And the
/// operator's config carries the stack's retention, journal and archive settings, which
/// `standby` reads back (so `hold --legal` reaches the archive copy).
#[test]
fn journal_filters_follow_journal_allow_and_the_config_carries_the_policy() {
    let script = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
import stack
class Ses:
    def __init__(self):
        self.filters = [{"Name": "other-rule", "IpFilter": {"Cidr": "203.0.113.9/32", "Policy": "Block"}}]
    def list_receipt_filters(self):
        return {"Filters": [dict(f) for f in self.filters]}
    def create_receipt_filter(self, Filter):
        assert all(f["Name"] != Filter["Name"] for f in self.filters), Filter
        self.filters.append(Filter)
    def delete_receipt_filter(self, FilterName):
        self.filters = [f for f in self.filters if f["Name"] != FilterName]
ses = Ses()
stack.sync_journal_filters(ses, "mx", stack.split_list("['192.0.2.25/32', '2001:db8::/64', '198.51.100.0/24']"))
first = sorted((f["Name"], f["IpFilter"]["Cidr"], f["IpFilter"]["Policy"]) for f in ses.filters)
stack.sync_journal_filters(ses, "mx", ["198.51.100.7/24"])
second = sorted((f["Name"], f["IpFilter"]["Cidr"]) for f in ses.filters)
params = {"RetentionDays": "30", "FailedRetentionDays": "90", "JournalDays": "2555",
          "JournalAddresses": "journal@example.test", "JournalAllow": "192.0.2.25/32",
          "ArchiveLockMode": "COMPLIANCE",
          "ConfidentialRules": '[{"name": "hr", "rcpt": "*@hr.example.test", "keep_days": 0}]'}
top, tables = stack.retention_config(params, {"ArchiveBucket": "mx-archive"})
print(json.dumps({"first": first, "second": second, "top": top, "tables": tables}))
"#;
    let out = Command::new(require_venv_tool("python"))
        .args(["-c", script])
        .arg(repo().join("scripts"))
        .output()
        .unwrap();
    let (said, err) = text(&out);
    assert!(out.status.success(), "{said}{err}");
    let last = said.lines().last().unwrap();
    let got: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(
        got["first"],
        serde_json::json!([
            ["mx-j1", "192.0.2.25/32", "Allow"],
            ["mx-j2", "198.51.100.0/24", "Allow"],
            ["other-rule", "203.0.113.9/32", "Block"]
        ]),
        "{said}"
    );
    assert!(
        said.contains("2001:db8::/64: SES IP address filters take IPv4"),
        "{said}"
    );
    assert_eq!(
        got["second"],
        serde_json::json!([
            ["mx-j2", "198.51.100.0/24"],
            ["other-rule", "203.0.113.9/32"]
        ]),
        "{said}"
    );

    // The generated settings, in a config `standby` reads.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("standby.toml");
    std::fs::write(
        &path,
        format!(
            "backend = \"aws\"\nbucket = \"mx-mail\"\ntable = \"mx-mail\"\nregion = \"us-east-1\"\n\
             domains = [\"example.test\"]\nhostname = \"standby-drain.invalid\"\n{}\n\
             [primary]\naddress = \"mx1.example.test:587\"\n{}",
            got["top"].as_str().unwrap(),
            got["tables"].as_str().unwrap()
        ),
    )
    .unwrap();
    let config = standby::config::Config::load(&path)
        .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&path).unwrap()));
    let aws = config.aws_settings().unwrap();
    let archive = aws.archive.expect("archive settings");
    assert_eq!(archive.bucket, "mx-archive");
    assert_eq!(archive.mode, standby::config::LockMode::Compliance);
    assert_eq!(aws.keep_delivered_days, Some(30));
    let policy = config.retention();
    assert_eq!(
        (
            policy.failed_days,
            policy.journal_days,
            policy.confidential.len()
        ),
        (Some(90), Some(2555), 1)
    );
    assert!(config.journal().is_enabled());
}

/// `AWS::SES::EmailIdentity` fails for a domain that is an SES identity already (most
/// domains that ever used SES): `scripts/stack.py identity`, which `scripts/deploy` asks
/// before `sam deploy`, says `false` for such a domain, so the stack leaves it alone, and
/// `true` for a new one. Against moto, with the identity made outside any stack.
#[test]
fn an_existing_ses_identity_is_left_to_itself() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    aws_init(&moto, dir.path(), "idmail");
    // example.test becomes an SES identity, and a stand-in stack without DomainIdentity.
    let out = Command::new(require_venv_tool("python"))
        .arg(repo().join("tests/fixtures/ses-setup.py"))
        .args([moto.url.as_str(), "idmail", "example.test"])
        .args([
            "--no-activate",
            "--stack",
            "standby-mx",
            "--primary-port",
            "25",
        ])
        .envs(child_env(&moto))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let identity = |stack: &str, domain: Option<&str>| {
        let mut cmd = Command::new(require_venv_tool("python"));
        cmd.arg(repo().join("scripts/stack.py"))
            .args(["identity", "--stack", stack, "--region", "us-east-1"])
            .envs(child_env(&moto));
        if let Some(d) = domain {
            cmd.args(["--domain", d]);
        }
        let out = cmd.output().unwrap();
        let (said, err) = text(&out);
        assert!(out.status.success(), "{said}{err}");
        (said.trim().to_string(), err)
    };
    // The deployed stack's first domain (from its parameters), and named.
    let (said, err) = identity("standby-mx", None);
    assert_eq!(said, "false", "{err}");
    assert!(
        err.contains("example.test is an SES identity already"),
        "{err}"
    );
    assert_eq!(identity("standby-mx", Some("example.test")).0, "false");
    // A first deploy for a new domain creates it.
    assert_eq!(identity("new-stack", Some("fresh.example.net")).0, "true");
    // A redeploy after a destroy (the identity kept, no stack, no --domains) finds the
    // domain in samconfig.toml.
    let samconfig = dir.path().join("samconfig.toml");
    std::fs::write(
        &samconfig,
        "version = 0.1\n[default.deploy.parameters]\nparameter_overrides = \"DomainNames=\\\"example.test,example.org\\\" PrimaryHost=\\\"mx1.example.test\\\"\"\n",
    )
    .unwrap();
    let out = Command::new(require_venv_tool("python"))
        .arg(repo().join("scripts/stack.py"))
        .args(["identity", "--stack", "gone-stack", "--region", "us-east-1"])
        .arg("--samconfig")
        .arg(&samconfig)
        .envs(child_env(&moto))
        .output()
        .unwrap();
    assert_eq!(text(&out).0.trim(), "false", "{}", text(&out).1);

    // A stack made by an earlier version owns its MX set as the resource MxRecords: the
    // update must keep it (CloudFormation would delete the live set with the resource).
    let owns_mx = |stack: &str| {
        let out = Command::new(require_venv_tool("python"))
            .arg(repo().join("scripts/stack.py"))
            .args(["owns-mx", "--stack", stack, "--region", "us-east-1"])
            .envs(child_env(&moto))
            .output()
            .unwrap();
        let (said, err) = text(&out);
        assert!(out.status.success(), "{said}{err}");
        said.trim().to_string()
    };
    assert_eq!(owns_mx("standby-mx"), "false");
    assert_eq!(owns_mx("never-deployed"), "false");
    let old_stack = r#"
import boto3, sys
template = "Resources:\n  MxRecords:\n    Type: AWS::S3::Bucket\n    Properties:\n      BucketName: old-mx-stand-in\n"
cfn = boto3.client("cloudformation", endpoint_url=sys.argv[1], region_name="us-east-1")
cfn.create_stack(StackName="old-mx", TemplateBody=template)
"#;
    let out = Command::new(require_venv_tool("python"))
        .args(["-c", old_stack, moto.url.as_str()])
        .envs(child_env(&moto))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(owns_mx("old-mx"), "true");
}

/// With a hosted zone, the standby's MX record joins the domain's MX set and nothing in
/// it is dropped (an UPSERT replaces the whole set; the template's RecordSet would fail on
/// the existing one): the change is printed, written only when confirmed, and a second
/// run finds the record there. Against moto's Route 53.
#[test]
fn the_standby_joins_the_existing_mx_set_and_the_primary_stays() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    aws_init(&moto, dir.path(), "mxmail");
    // The zone, with the primary's MX and a second MX of the organisation's.
    let zone_py = r#"
import boto3, json, sys
r53 = boto3.client("route53", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
if sys.argv[2] == "create":
    z = r53.create_hosted_zone(Name="example.test.", CallerReference="t")["HostedZone"]["Id"].split("/")[-1]
    r53.change_resource_record_sets(HostedZoneId=z, ChangeBatch={"Changes": [{"Action": "CREATE",
        "ResourceRecordSet": {"Name": "example.test.", "Type": "MX", "TTL": 3600,
        "ResourceRecords": [{"Value": "10 mx1.example.test."}, {"Value": "15 mx2.example.test."}]}}]})
    print(z)
elif sys.argv[2] == "low":
    # The organisation's second MX at 30, above the standby's 20.
    r53.change_resource_record_sets(HostedZoneId=sys.argv[3], ChangeBatch={"Changes": [{"Action": "UPSERT",
        "ResourceRecordSet": {"Name": "example.test.", "Type": "MX", "TTL": 3600,
        "ResourceRecords": [{"Value": "10 mx1.example.test."}, {"Value": "30 mx2.example.test."}]}}]})
    sets = r53.list_resource_record_sets(HostedZoneId=sys.argv[3])["ResourceRecordSets"]
    print(json.dumps([[s["Name"], s["TTL"], sorted(r["Value"] for r in s["ResourceRecords"])] for s in sets if s["Type"] == "MX"]))
else:
    sets = r53.list_resource_record_sets(HostedZoneId=sys.argv[3])["ResourceRecordSets"]
    mx = [s for s in sets if s["Type"] == "MX"]
    print(json.dumps([[s["Name"], s["TTL"], sorted(r["Value"] for r in s["ResourceRecords"])] for s in mx]))
"#;
    let zone_cmd = |args: &[&str]| {
        let out = Command::new(require_venv_tool("python"))
            .args(["-c", zone_py, moto.url.as_str()])
            .args(args)
            .envs(child_env(&moto))
            .output()
            .unwrap();
        let (said, err) = text(&out);
        assert!(out.status.success(), "{said}{err}");
        said.trim().to_string()
    };
    let zone = zone_cmd(&["create"]);
    let out = Command::new(require_venv_tool("python"))
        .arg(repo().join("tests/fixtures/ses-setup.py"))
        .args([moto.url.as_str(), "mxmail", "example.test"])
        .args([
            "--no-activate",
            "--stack",
            "standby-mx",
            "--primary-port",
            "25",
        ])
        .args(["--hosted-zone-id", &zone])
        .envs(child_env(&moto))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let before = zone_cmd(&["list", &zone]);
    let config = dir.path().join("standby.toml");

    // No terminal, no --yes: the change is printed, the zone is left as it was.
    let out = after_deploy(&moto, &config, &[]);
    let (said, err) = text(&out);
    assert!(out.status.success(), "{said}{err}");
    assert!(
        said.contains("keep example.test. MX 10 mx1.example.test."),
        "{said}"
    );
    assert!(
        said.contains("keep example.test. MX 15 mx2.example.test."),
        "{said}"
    );
    assert!(
        said.contains("add  example.test. MX 20 inbound-smtp.us-east-1.amazonaws.com."),
        "{said}"
    );
    assert!(
        said.contains("MX set of example.test. not changed"),
        "{said}"
    );
    assert_eq!(zone_cmd(&["list", &zone]), before);

    let out = after_deploy(&moto, &config, &["--yes"]);
    let (said, err) = text(&out);
    assert!(out.status.success(), "{said}{err}");
    let after: serde_json::Value = serde_json::from_str(&zone_cmd(&["list", &zone])).unwrap();
    assert_eq!(
        after,
        serde_json::json!([[
            "example.test.",
            3600,
            [
                "10 mx1.example.test.",
                "15 mx2.example.test.",
                "20 inbound-smtp.us-east-1.amazonaws.com."
            ]
        ]]),
        "{said}"
    );
    let out = after_deploy(&moto, &config, &["--yes"]);
    let (said, _) = text(&out);
    assert!(said.contains("(the standby's record is there)"), "{said}");

    // Destroy takes the standby's record out again (SES would refuse the mail a standby
    // MX left pointing at it receives), keeping the others.
    let out = Command::new(require_venv_tool("python"))
        .arg(repo().join("scripts/stack.py"))
        .args([
            "before-destroy",
            "--stack",
            "standby-mx",
            "--region",
            "us-east-1",
            "--yes",
        ])
        .envs(child_env(&moto))
        .output()
        .unwrap();
    let (said, err) = text(&out);
    assert!(out.status.success(), "{said}{err}");
    assert!(said.contains("removed the standby's record"), "{said}");
    assert_eq!(zone_cmd(&["list", &zone]), before, "{said}");

    // A set where the standby would not be the least preferred is refused, unchanged.
    let low = zone_cmd(&["low", &zone]);
    let out = after_deploy(&moto, &config, &["--yes"]);
    let (said, err) = text(&out);
    assert!(!out.status.success(), "{said}{err}");
    assert!(err.contains("would not be the least preferred"), "{err}");
    assert_eq!(zone_cmd(&["list", &zone]), low);
}

/// The MX merge's other cases, with a stand-in Route 53 client: a domain with no MX gets
/// the primary's record and the standby's; a primary given as an IP address is refused
/// (an MX names a host); a standby record at another preference is corrected, the others
/// kept; a stack that owns its set (LegacyMxRecordSet) is left alone.
#[test]
fn the_mx_merge_handles_an_empty_set_a_moved_preference_and_a_legacy_stack() {
    let script = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
import stack
class R53:
    def __init__(self, values):
        self.sets = [] if values is None else [{"Name": "example.test.", "Type": "MX", "TTL": 600,
                     "ResourceRecords": [{"Value": v} for v in values]}]
    def list_resource_record_sets(self, **kw):
        return {"ResourceRecordSets": list(self.sets)}
    def change_resource_record_sets(self, HostedZoneId, ChangeBatch):
        for c in ChangeBatch["Changes"]:
            if c["Action"] == "UPSERT":
                self.sets = [c["ResourceRecordSet"]]
            elif c["Action"] == "DELETE":
                self.sets = []
    def values(self):
        return [[s["TTL"], [r["Value"] for r in s["ResourceRecords"]]] for s in self.sets]
params = {"HostedZoneId": "Z1", "PrimaryHost": "mx1.example.test", "StandbyMxPreference": "20",
          "PrimaryMxPreference": "10"}
out = {}
r = R53(None)
stack.merge_mx(r, params, "example.test", "eu-west-1", True)
out["empty"] = r.values()
r = R53(["10 mx1.example.test.", "30 inbound-smtp.eu-west-1.amazonaws.com."])
stack.merge_mx(r, params, "example.test", "eu-west-1", True)
out["moved"] = r.values()
r = R53(["10 mx1.example.test."])
stack.merge_mx(r, dict(params, LegacyMxRecordSet="true"), "example.test", "eu-west-1", True)
out["legacy"] = r.values()
try:
    stack.merge_mx(R53(None), dict(params, PrimaryHost="192.0.2.25"), "example.test", "eu-west-1", True)
    out["ip"] = "written"
except SystemExit as e:
    out["ip"] = str(e)
print(json.dumps(out))
"#;
    let out = Command::new(require_venv_tool("python"))
        .args(["-c", script])
        .arg(repo().join("scripts"))
        .output()
        .unwrap();
    let (said, err) = text(&out);
    assert!(out.status.success(), "{said}{err}");
    let got: serde_json::Value = serde_json::from_str(said.lines().last().unwrap()).unwrap();
    assert_eq!(
        got["empty"],
        serde_json::json!([[
            300,
            [
                "10 mx1.example.test.",
                "20 inbound-smtp.eu-west-1.amazonaws.com."
            ]
        ]]),
        "{said}"
    );
    assert_eq!(
        got["moved"],
        serde_json::json!([[
            600,
            [
                "10 mx1.example.test.",
                "20 inbound-smtp.eu-west-1.amazonaws.com."
            ]
        ]]),
        "{said}"
    );
    assert!(
        said.contains("drop example.test. MX 30 inbound-smtp"),
        "{said}"
    );
    assert_eq!(
        got["legacy"],
        serde_json::json!([[600, ["10 mx1.example.test."]]]),
        "{said}"
    );
    assert!(
        got["ip"].as_str().unwrap().contains("needs a host name"),
        "{said}"
    );
}
