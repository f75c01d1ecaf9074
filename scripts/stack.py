#!/usr/bin/env python3
"""The steps of scripts/deploy and scripts/destroy that no CloudFormation resource does.

    stack.py recipients FILE          split a recipients file into the template's
                                      Recipients..Recipients4 parameters (100 each)
    stack.py after-deploy ...         activate the receipt rule set, verify the other
                                      domains, print the DNS records, finish the SMTP
                                      secret, allow JournalAllow through SES's IP
                                      filters, write standby.toml (with the stack's
                                      retention, journal and archive settings)
    stack.py identity ...             "true" if the stack should create the first
                                      domain's SES identity, "false" if it exists already
    stack.py owns-mx ...              "true" if the stack owns its MX set as a resource
                                      (an earlier version's): LegacyMxRecordSet
    stack.py before-destroy ...       deactivate our receipt rule set, remove our IP
                                      filters, empty the bucket (if told)

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

    # 1b. The MX set, in the hosted zone when the stack was given one.
    if params.get("HostedZoneId") and domains:
        merge_mx(boto3.client("route53", region_name=a.region), params, domains[0], a.region, a.yes)

    # 2. Identities: the template owns the first domain's, unless it was an SES identity
    # before the stack (CreateDomainIdentity=false); verify the others here.
    records = []
    own_identity = "DkimRecords" in out
    if not params.get("HostedZoneId"):
        for mx in out.get("MxRecords", "").split(" | "):
            if mx:
                records.append(mx)
        for dkim in out.get("DkimRecords", "").split(" | "):
            if dkim:
                records.append(dkim)
    if not own_identity and domains:
        print(f"== SES identity {domains[0]} existed before the stack: it is left as it was"
              + (" (set its custom MAIL FROM yourself: aws sesv2 "
                 "put-email-identity-mail-from-attributes)" if "MailFromRecords" in out else ""))
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

    # 4. Journal copies from the primary: SES blocks mail from Amazon EC2 addresses unless
    # an IP address filter allows them (SES Developer Guide, "Email receiving concepts",
    # IP address filters), so each IPv4 network of JournalAllow gets an Allow filter. The
    # filters are the region's, not the rule set's: ours are named <stack>-j<n>, and
    # filters of ours no longer in JournalAllow are removed.
    # Only with journal addresses: the filters open the whole region's rule sets to
    # those networks.
    allow = split_list(params.get("JournalAllow", "")) if split_list(params.get("JournalAddresses", "")) else []
    try:
        sync_journal_filters(ses, a.stack, allow)
    except Exception as e:  # noqa: BLE001 - said, then the other steps go on
        if allow:
            raise
        # Nothing to allow; only stale filters of an earlier JournalAllow would go.
        print(f"!! could not list SES receipt filters ({e}): remove any named "
              f"{filter_prefix(a.stack)}<n> yourself if JournalAllow was emptied")

    # 5. The operator CLI's config.
    config = (
        "# Written by scripts/deploy for the operator commands (standby status, list, ...).\n"
        'backend = "aws"\n'
        f'bucket = {q(out["Bucket"])}\n'
        f'table = {q(out["Table"])}\n'
        f'region = {q(a.region)}\n'
        f"domains = {json.dumps(domains, ensure_ascii=False)}\n"
        f"hold_days = {params.get('HoldDays', '5')}\n"
        "# EHLO name of `standby drain` run from here, as the drain function's; set the\n"
        "# standby's real, fully qualified name if the primary checks HELO.\n"
        'hostname = "standby-drain.invalid"\n\n'
        "[primary]\n"
        f'address = {q(str(params.get("PrimaryHost")) + ":" + str(params.get("DrainPort", "587")))}\n'
        f'tls = {q(params.get("PrimaryTls", "required"))}\n'
    )
    if params.get("PrimaryAuthUser"):
        config += (f'auth_user = {q(params["PrimaryAuthUser"])}\n'
                   "# export STANDBY_PRIMARY_SECRET=<the secret's ARN> for `standby drain`/`doctor`\n"
                   'auth_password_env = "STANDBY_PRIMARY_SECRET"\n')
    top, tables = retention_config(params, out)
    if out.get("AlarmTopic"):
        # `standby doctor` checks the topic has a confirmed subscription.
        tables += f'\n[metrics]\nalarm_topic = {q(out["AlarmTopic"])}\n'
    # `standby user add bob` means bob@<first domain>, as the web function reads it.
    if domains:
        tables += f'\n[users]\ndefault_domain = {q(domains[0])}\n'
    config = config.replace("\n[primary]\n", f"{top}\n[primary]\n", 1) + tables
    if os.path.exists(a.config_out) and open(a.config_out).read() != config:
        if not confirm(f"{a.config_out} exists; replace it?", a.yes):
            print(f"!! kept {a.config_out}; the stack's config would be:\n{config}")
            return
    with open(a.config_out, "w") as f:
        f.write(config)
    print(f"== wrote {a.config_out} (drain function: {out['DrainFunctionName']})")
    if out.get("WebUrl"):
        print(f"== emergency inbox: {out['WebUrl']} (add users with `standby user add ADDRESS`)")


def read_mx(route53, zone, name):
    """The MX record set of `name` in `zone`, or None."""
    page = route53.list_resource_record_sets(
        HostedZoneId=zone, StartRecordName=name, StartRecordType="MX", MaxItems="1")
    return next((r for r in page.get("ResourceRecordSets", [])
                 if r["Name"].lower() == name.lower() and r["Type"] == "MX"), None)


def write_mx(route53, zone, name, current, want, comment):
    """Replace the set `current` (as read) by `want`: an UPSERT of the whole set, or a
    DELETE of exactly what was read when nothing is left. (A DELETE and a CREATE in one
    batch would also refuse a set someone changed meanwhile; moto, which the tests run
    against, mishandles that batch on a set it wrote itself.)"""
    if want:
        change = {"Action": "UPSERT", "ResourceRecordSet": {
            "Name": name, "Type": "MX", "TTL": current["TTL"] if current else 300,
            "ResourceRecords": [{"Value": v} for v in want]}}
    else:
        change = {"Action": "DELETE", "ResourceRecordSet": current}
    route53.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={
        "Comment": comment, "Changes": [change]})


def standby_mx(region):
    return f"inbound-smtp.{region}.amazonaws.com"


def mx_host(value):
    return value.split()[-1].rstrip(".").lower()


def merge_mx(route53, params, domain, region, yes):
    """Add the standby's MX record to the domain's MX set in the hosted zone, keeping every
    record there. Route 53 has one record set per name and type (Route 53 API reference,
    ChangeResourceRecordSets), so the set is read, the standby's record added (or its
    preference corrected), the change printed, and the merged set written back after
    asking. The primary's record is
    added only when the domain has no MX at all. The standby must stay the least
    preferred: a set where it would not be is refused."""
    zone = params["HostedZoneId"]
    name = domain.rstrip(".") + "."
    if params.get("LegacyMxRecordSet") == "true":
        print(f"== MX {name}: the stack's own record set (made by an earlier version), left to it")
        return
    current = read_mx(route53, zone, name)
    if current and "ResourceRecords" not in current:
        sys.exit(f"stack.py: the MX set of {name} is an alias or a routing-policy set: add "
                 f"`{name} MX {params.get('StandbyMxPreference', '20')} {standby_mx(region)}.` yourself")
    have = [r["Value"] for r in current["ResourceRecords"]] if current else []
    pref = int(params.get("StandbyMxPreference", "20"))
    ours = f"{pref} {standby_mx(region)}."
    others = [v for v in have if mx_host(v) != standby_mx(region)]
    if not have:
        primary = (params.get("PrimaryMxHost") or params.get("PrimaryHost") or "").rstrip(".")
        if not primary or re.fullmatch(r"[0-9.]+|[0-9A-Fa-f:]+", primary):
            sys.exit(f"stack.py: {name} has no MX record, and the primary's MX needs a host "
                     f"name (PrimaryMxHost), not {primary or 'nothing'}")
        others = [f"{params.get('PrimaryMxPreference', '10')} {primary}."]
    least_preferred = max((int(v.split()[0]) for v in others), default=-1)
    if pref <= least_preferred:
        sys.exit(f"stack.py: StandbyMxPreference {pref} would not be the least preferred MX of "
                 f"{name} ({' | '.join(others)}): senders would prefer the standby while the "
                 "primary is up. Choose a higher StandbyMxPreference")
    want = others + [ours]
    if sorted(want) == sorted(have):
        print(f"== MX {name}: {' | '.join(have)} (the standby's record is there)")
        return
    print(f"== MX {name} in hosted zone {zone}:")
    for v in sorted(set(want) | set(have), key=lambda v: int(v.split()[0])):
        verb = "keep" if v in have and v in want else ("add " if v in want else "drop")
        print(f"   {verb} {name} MX {v}")
    if not confirm(f"Write the MX set of {name} as above?", yes):
        print(f"!! MX set of {name} not changed: add `{name} MX {ours}` yourself")
        return
    write_mx(route53, zone, name, current, want,
             "standby-mx: the standby's MX record added to the set")
    print(f"== MX set of {name} written: {' | '.join(want)}")


def unmerge_mx(route53, params, domain, region):
    """At destroy: take the standby's record out of the domain's MX set again (a standby
    MX left pointing at SES, which then refuses the mail, turns a primary's outage into
    bounces), keeping every other record."""
    zone = params.get("HostedZoneId")
    if not zone or params.get("LegacyMxRecordSet") == "true":
        return
    name = domain.rstrip(".") + "."
    current = read_mx(route53, zone, name)
    if not current or "ResourceRecords" not in current:
        return
    have = [r["Value"] for r in current["ResourceRecords"]]
    want = [v for v in have if mx_host(v) != standby_mx(region)]
    if want == have:
        return
    write_mx(route53, zone, name, current, want,
             "standby-mx: the standby's MX record removed at destroy")
    print(f"== MX set of {name}: removed the standby's record ({' | '.join(want) or 'no MX left'})")


def q(value):
    """A TOML basic string: JSON's escapes are TOML's, and characters outside ASCII stay
    themselves (JSON's surrogate pairs are not valid TOML)."""
    return json.dumps(str(value), ensure_ascii=False)


def split_list(value):
    """A CommaDelimitedList parameter as CloudFormation gives it ("a,b"), or moto ("['a', 'b']")."""
    return [v.strip(" '\"[]") for v in value.split(",") if v.strip(" '\"[]")]


def filter_prefix(stack):
    return f"{stack}-j"


def sync_journal_filters(ses, stack, allow):
    import ipaddress
    want = {}
    for cidr in allow:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            print(f"!! JournalAllow entry {cidr!r} is not an address or network: no filter for it")
            continue
        if net.version != 4:
            print(f"== JournalAllow {cidr}: SES IP address filters take IPv4 networks; none made for it")
            continue
        want[str(net)] = None
    prefix = filter_prefix(stack)
    have = {f["Name"]: (f["IpFilter"]["Cidr"], f["IpFilter"].get("Policy"))
            for f in ses.list_receipt_filters().get("Filters", [])
            if f["Name"].startswith(prefix) and f["Name"][len(prefix):].isdigit()}
    kept = set()
    for name, (cidr, policy) in sorted(have.items()):
        net = str(ipaddress.ip_network(cidr, strict=False))
        if net in want and net not in kept and policy == "Allow":
            kept.add(net)
            print(f"== SES receipt filter {name} allows {net} (journal copies from the primary)")
        else:
            ses.delete_receipt_filter(FilterName=name)
            print(f"== removed SES receipt filter {name} ({cidr}, {policy}: not an Allow of JournalAllow)")
    used = set(have)
    n = 1
    for net in want:
        if net in kept:
            continue
        while f"{prefix}{n}" in used:
            n += 1
        name = f"{prefix}{n}"
        used.add(name)
        ses.create_receipt_filter(Filter={"Name": name, "IpFilter": {"Cidr": net, "Policy": "Allow"}})
        print(f"== created SES receipt filter {name}: allow {net} (SES blocks Amazon EC2 "
              "addresses by default; journal copies come from there)")


def retention_config(params, out):
    """The stack's retention, journal and archive settings, as the functions have them, so
    the operator commands (retention, hold --legal, purge) apply the same policy and reach
    the archive bucket's copies."""
    top, text = "", ""
    if params.get("RetentionDays"):
        top += f"keep_delivered_days = {params['RetentionDays']}\n"
    journal = split_list(params.get("JournalAddresses", ""))
    if journal and out.get("ArchiveBucket"):
        top += (f'archive_bucket = {q(out["ArchiveBucket"])}\n'
                f'archive_lock_mode = {q(params.get("ArchiveLockMode", "GOVERNANCE").lower())}\n')
    if journal:
        text += ("\n[journal]\n"
                 f"addresses = {json.dumps(journal, ensure_ascii=False)}\n"
                 f"allow = {json.dumps(split_list(params.get('JournalAllow', '')), ensure_ascii=False)}\n")
    retention = ""
    if params.get("FailedRetentionDays"):
        retention += f"failed_days = {params['FailedRetentionDays']}\n"
    if journal and params.get("JournalDays"):
        retention += f"journal_days = {params['JournalDays']}\n"
    if params.get("ConfidentialRules", "").strip():
        retention += f"confidential = {q(params['ConfidentialRules'])}\n"
    if retention:
        text += "\n[retention]\n" + retention
    return top, text


def stack_missing(e):
    """A ClientError that says the stack does not exist (and nothing else)."""
    err = e.response.get("Error", {})
    return err.get("Code") == "ValidationError" and "does not exist" in err.get("Message", "")


def samconfig_domain(path):
    """The first domain of DomainNames in samconfig.toml's parameter_overrides (a deploy
    without --domains reuses it), or None."""
    if not path or not os.path.exists(path):
        return None
    m = re.search(r'DomainNames=\\?"?([^",\\ ]+)', open(path).read())
    return m.group(1) if m else None


def cmd_owns_mx(a):
    """Print "true" when the deployed stack owns its domain's MX set as the resource
    MxRecords (made by an earlier version): the update must keep it (LegacyMxRecordSet),
    or CloudFormation would delete the live set."""
    import boto3
    from botocore.exceptions import ClientError
    cfn = boto3.client("cloudformation", region_name=a.region)
    try:
        ours = cfn.describe_stack_resources(StackName=a.stack)["StackResources"]
    except ClientError as e:
        if not stack_missing(e):
            raise  # denied, throttled, expired: never guess "absent" (it deletes the set)
        ours = []
    print("true" if any(r["LogicalResourceId"] == "MxRecords" for r in ours) else "false")


def cmd_identity(a):
    """Print "true" when the stack should create the first domain's SES identity: it
    owns it already, or the domain is no SES identity yet. "false" when the domain is an
    identity made outside the stack (creating it again would fail the deploy)."""
    import boto3
    from botocore.exceptions import ClientError
    cfn = boto3.client("cloudformation", region_name=a.region)
    ses = boto3.client("ses", region_name=a.region)
    domain = a.domain
    try:
        stack = cfn.describe_stacks(StackName=a.stack)["Stacks"][0]
    except ClientError as e:
        if not stack_missing(e):
            raise
        stack = None
    if stack and stack.get("StackStatus") == "ROLLBACK_COMPLETE":
        stack = None  # its first create failed: it owns nothing (and is deleted on deploy)
    domain = domain or samconfig_domain(a.samconfig)
    if stack:
        ours = cfn.describe_stack_resources(StackName=a.stack)["StackResources"]
        if any(r["LogicalResourceId"] == "DomainIdentity" for r in ours):
            print("true")
            return
        params = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}
        domain = domain or next(iter(split_list(params.get("DomainNames", ""))), None)
    if not domain:
        print("identity: no domain known yet (first guided run): the stack creates the identity",
              file=sys.stderr)
        print("true")
        return
    attrs = ses.get_identity_verification_attributes(Identities=[domain])["VerificationAttributes"]
    if domain in attrs:
        print(f"identity: {domain} is an SES identity already ({attrs[domain].get('VerificationStatus')}):"
              " the stack leaves it alone (CreateDomainIdentity=false)", file=sys.stderr)
        print("false")
    else:
        print("true")


def cmd_before_destroy(a):
    import boto3
    cfn = boto3.client("cloudformation", region_name=a.region)
    ses = boto3.client("ses", region_name=a.region)
    stack = cfn.describe_stacks(StackName=a.stack)["Stacks"][0]
    out = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    params = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}
    domains = split_list(params.get("DomainNames", ""))
    if domains:
        unmerge_mx(boto3.client("route53", region_name=a.region), params, domains[0], a.region)
    active = ses.describe_active_receipt_rule_set().get("Metadata", {}).get("Name")
    if active == out.get("RuleSet"):
        # An active rule set cannot be deleted.
        ses.set_active_receipt_rule_set()
        print(f"== deactivated receipt rule set {active}: SES now rejects mail in {a.region}")
    prefix = filter_prefix(a.stack)
    try:
        filters = ses.list_receipt_filters().get("Filters", [])
    except Exception as e:  # noqa: BLE001 - said; the rest of the teardown goes on
        filters = []
        print(f"!! could not list SES receipt filters ({e}): remove any named {prefix}<n> yourself")
    for f in filters:
        if f["Name"].startswith(prefix) and f["Name"][len(prefix):].isdigit():
            ses.delete_receipt_filter(FilterName=f["Name"])
            print(f"== removed SES receipt filter {f['Name']} ({f['IpFilter']['Cidr']})")
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
    i = sub.add_parser("identity")
    i.add_argument("--stack", required=True)
    i.add_argument("--region", required=True)
    i.add_argument("--domain")
    i.add_argument("--samconfig", default="infra/samconfig.toml")
    m = sub.add_parser("owns-mx")
    m.add_argument("--stack", required=True)
    m.add_argument("--region", required=True)
    a = p.parse_args()
    {"recipients": cmd_recipients, "after-deploy": cmd_after_deploy,
     "before-destroy": cmd_before_destroy, "identity": cmd_identity,
     "owns-mx": cmd_owns_mx}[a.cmd](a)


if __name__ == "__main__":
    main()
