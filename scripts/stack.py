#!/usr/bin/env python3
"""The steps of scripts/deploy and scripts/destroy that no CloudFormation resource does.

    stack.py recipients FILE          split a recipients file into the template's
                                      Recipients..Recipients4 parameters (100 each)
    stack.py after-deploy ...         activate the receipt rule set, verify the other
                                      domains, print the DNS records, finish the SMTP
                                      secret, write standby.toml
    stack.py before-destroy ...       deactivate our receipt rule set, empty the bucket

Only `recipients` runs without boto3 and AWS credentials (it is what --dry-run uses).
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import sys

PER_RULE = 100  # SES: recipient conditions per receipt rule
RULES = 4  # Recipients, Recipients2, Recipients3, Recipients4 in infra/template.yaml
PARAMS = ["Recipients", "Recipients2", "Recipients3", "Recipients4"]

DOMAIN = r"\.?[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
CONDITION = re.compile(rf"^(?:[^@\s,\"]+@)?{DOMAIN}$")


def die(msg, code=2):
    print(f"stack.py: {msg}", file=sys.stderr)
    sys.exit(code)


def read_recipients(path):
    """Conditions from FILE: one address or domain a line, # comments; errors name the line."""
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as e:
        die(f"{path}: {e.strerror}")
    out, seen = [], set()
    for n, line in enumerate(lines, 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        if not CONDITION.match(item):
            die(f"{path}:{n}: `{item}` is not an address or a domain")
        key = item.lower()
        if key not in seen:
            seen.add(key)
            out.append(item)
    if not out:
        die(f"{path}: no recipients in the file")
    if len(out) > PER_RULE * RULES:
        die(f"{path}: {len(out)} recipients; the template takes at most {PER_RULE * RULES} "
            f"({RULES} rules of {PER_RULE}); list whole domains instead of addresses")
    return out


def cmd_recipients(a):
    items = read_recipients(a.file)
    for i, name in enumerate(PARAMS):
        chunk = items[i * PER_RULE:(i + 1) * PER_RULE]
        print(f"{name}={','.join(chunk)}")


def ses_smtp_password(secret_key, region):
    """SES SMTP password from an IAM secret access key (SES developer guide,
    "Obtaining Amazon SES SMTP credentials": SigV4-style HMAC chain, version byte 4)."""
    def sign(key, msg):
        return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()
    sig = sign(("AWS4" + secret_key).encode("utf-8"), "11111111")
    for part in (region, "ses", "aws4_request", "SendRawEmail"):
        sig = sign(sig, part)
    return base64.b64encode(bytes([0x04]) + sig).decode("utf-8")


def confirm(question, yes):
    if yes:
        return True
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def cmd_after_deploy(a):
    import boto3
    cfn = boto3.client("cloudformation", region_name=a.region)
    ses = boto3.client("ses", region_name=a.region)
    stack = cfn.describe_stacks(StackName=a.stack)["Stacks"][0]
    out = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    params = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}
    # CloudFormation gives a CommaDelimitedList as "a.com,b.org" (moto as "['a.com', 'b.org']").
    domains = re.findall(r"[A-Za-z0-9][A-Za-z0-9.-]*", params.get("DomainNames", ""))

    # 1. The receipt rule set: SES has one active set per region.
    ours = out["RuleSet"]
    active = ses.describe_active_receipt_rule_set().get("Metadata", {}).get("Name")
    if active == ours:
        print(f"== receipt rule set {ours} is active")
    else:
        if active:
            print(f"!! the active receipt rule set in {a.region} is `{active}`; activating "
                  f"`{ours}` replaces it, and mail its rules handled is no longer received.")
        if confirm(f"Activate receipt rule set {ours} in {a.region}?", a.yes):
            ses.set_active_receipt_rule_set(RuleSetName=ours)
            print(f"== activated receipt rule set {ours}")
        else:
            print(f"!! not activated: SES rejects mail for {', '.join(domains)} until "
                  f"`aws ses set-active-receipt-rule-set --rule-set-name {ours} --region {a.region}`")

    # 2. Identities: the template owns the first domain's; verify the others here.
    records = []
    if not params.get("HostedZoneId"):
        for mx in out.get("MxRecords", "").split(" | "):
            records.append(mx)
        for dkim in out.get("DkimRecords", "").split(" | "):
            records.append(dkim)
    for d in domains[1:]:
        ses.verify_domain_identity(Domain=d)
        tokens = ses.verify_domain_dkim(Domain=d)["DkimTokens"]
        records.append(f"{d}. MX {params.get('PrimaryMxPreference', '10')} <your primary MX host>.")
        records.append(f"{d}. MX {params.get('StandbyMxPreference', '20')} inbound-smtp.{a.region}.amazonaws.com.")
        for t in tokens:
            records.append(f"{t}._domainkey.{d}. CNAME {t}.dkim.amazonses.com.")
    if "MailFromRecords" in out and not params.get("HostedZoneId"):
        records.extend(out["MailFromRecords"].split(" | "))
    if records:
        print("== publish these DNS records (then run `standby doctor`):")
        for r in records:
            print(f"   {r}")
    status = ses.get_identity_verification_attributes(Identities=domains)["VerificationAttributes"]
    for d in domains:
        print(f"== SES identity {d}: {status.get(d, {}).get('VerificationStatus', 'NotStarted')}")

    # 3. Sending during an outage: add the SMTP password SES derives from the key.
    if "SmtpCredentialsSecret" in out:
        sm = boto3.client("secretsmanager", region_name=a.region)
        arn = out["SmtpCredentialsSecret"]
        secret = json.loads(sm.get_secret_value(SecretId=arn)["SecretString"])
        if "smtp_password" not in secret:
            secret["smtp_password"] = ses_smtp_password(secret["secret_access_key"], a.region)
            sm.put_secret_value(SecretId=arn, SecretString=json.dumps(secret))
        print(f"== SES SMTP: host email-smtp.{a.region}.amazonaws.com port 587 (STARTTLS), "
              f"user {secret['username']}; password: aws secretsmanager get-secret-value "
              f"--secret-id {arn} --query SecretString")

    # 4. The operator CLI's config.
    config = (
        "# Written by scripts/deploy for the operator commands (standby status, list, ...).\n"
        'backend = "aws"\n'
        f'bucket = "{out["Bucket"]}"\n'
        f'table = "{out["Table"]}"\n'
        f'region = "{a.region}"\n'
        f"domains = {json.dumps(domains)}\n"
        f"hold_days = {params.get('HoldDays', '5')}\n"
        "# EHLO name of `standby drain` run from here, as the drain function's; set the\n"
        "# standby's real, fully qualified name if the primary checks HELO.\n"
        'hostname = "standby-drain.invalid"\n\n'
        "[primary]\n"
        f'address = "{params.get("PrimaryHost")}:{params.get("DrainPort", "587")}"\n'
        f'tls = "{params.get("PrimaryTls", "required")}"\n'
    )
    if params.get("PrimaryAuthUser"):
        config += (f'auth_user = "{params["PrimaryAuthUser"]}"\n'
                   "# export STANDBY_PRIMARY_SECRET=<the secret's ARN> for `standby drain`/`doctor`\n"
                   'auth_password_env = "STANDBY_PRIMARY_SECRET"\n')
    if os.path.exists(a.config_out) and open(a.config_out).read() != config:
        if not confirm(f"{a.config_out} exists; replace it?", a.yes):
            print(f"!! kept {a.config_out}; the stack's config would be:\n{config}")
            return
    with open(a.config_out, "w") as f:
        f.write(config)
    print(f"== wrote {a.config_out} (drain function: {out['DrainFunctionName']})")


def cmd_before_destroy(a):
    import boto3
    cfn = boto3.client("cloudformation", region_name=a.region)
    ses = boto3.client("ses", region_name=a.region)
    stack = cfn.describe_stacks(StackName=a.stack)["Stacks"][0]
    out = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    active = ses.describe_active_receipt_rule_set().get("Metadata", {}).get("Name")
    if active == out.get("RuleSet"):
        # An active rule set cannot be deleted.
        ses.set_active_receipt_rule_set()
        print(f"== deactivated receipt rule set {active}: SES now rejects mail in {a.region}")
    if a.delete_bucket:
        s3 = boto3.resource("s3", region_name=a.region)
        bucket = s3.Bucket(out["Bucket"])
        bucket.object_versions.delete()
        bucket.delete()
        print(f"== deleted bucket {out['Bucket']} and every stored message")
    else:
        print(f"== kept bucket {out['Bucket']} (every stored message is still there)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recipients")
    r.add_argument("file")
    d = sub.add_parser("after-deploy")
    for q in (d, sub.add_parser("before-destroy")):
        q.add_argument("--stack", required=True)
        q.add_argument("--region", required=True)
        q.add_argument("--yes", action="store_true")
    d.add_argument("--config-out", default="standby.toml")
    sub.choices["before-destroy"].add_argument("--delete-bucket", action="store_true")
    a = p.parse_args()
    {"recipients": cmd_recipients, "after-deploy": cmd_after_deploy,
     "before-destroy": cmd_before_destroy}[a.cmd](a)


if __name__ == "__main__":
    main()
