//! What the primary must be told about the standby (`standby primary-config`).
//!
//! When the standby hands held mail back, the primary sees the standby as the client:
//! its SPF check of the original sender fails (the standby is not in the sender's
//! record), greylisting and rate limits apply to the standby, and a content filter
//! may refuse what it would have taken directly. The fix is on the primary: exempt the
//! standby's addresses from the client checks it already passed, and let the filter
//! read the original client from the standby's `Received:` header. Never by putting
//! the standby in `mynetworks` (or an Exchange connector with relay rights): that
//! would make the primary relay anything the standby sends anywhere.
//!
//! This module renders those settings as text, filled in; the command collects the
//! addresses. On AWS the drain function's addresses change from run to run, so the
//! exemption is by login instead: the drain delivers on the submission port with AUTH.

use std::fmt::Write as _;
use std::net::IpAddr;

/// The primary's software.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Postfix,
    Rspamd,
    Exchange,
    Mailcow,
}

/// What the settings are filled in with.
#[derive(Debug, Clone)]
pub struct Standby {
    /// The name the standby gives in its `Received:` header and EHLO.
    pub hostname: String,
    /// The addresses the standby connects to the primary from.
    pub addresses: Vec<IpAddr>,
    /// The drain logs in at the primary (`[primary] auth_user`): the submission route.
    pub auth_user: Option<String>,
    /// The drain runs as a Lambda function (`backend = "aws"`): no fixed address.
    pub aws: bool,
    /// The domain the standby seals redelivered mail with (`[arc] domain`).
    pub arc_domain: Option<String>,
}

/// `ip` as a CIDR of one address.
fn host_net(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

/// The settings for `target`, as text to print.
pub fn render(target: Target, s: &Standby) -> String {
    let mut out = String::new();
    let addrs: Vec<String> = s.addresses.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        out,
        "# standby-mx: settings for the primary, so that mail the standby {} hands back\n\
         # passes the checks it passed at the standby. Addresses: {}.\n\
         # Never put these addresses in mynetworks (or give them relay rights): the\n\
         # primary would relay anything the standby sends, anywhere.",
        s.hostname,
        if addrs.is_empty() {
            "none given".to_string()
        } else {
            addrs.join(", ")
        }
    );
    match target {
        Target::Postfix => postfix(&mut out, s),
        Target::Rspamd => rspamd(&mut out, s),
        Target::Exchange => exchange(&mut out, s),
        Target::Mailcow => mailcow(&mut out, s),
    }
    if s.aws || s.auth_user.is_some() {
        submission_route(&mut out, target, s);
    }
    out
}

fn postfix(out: &mut String, s: &Standby) {
    if s.addresses.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n# 1. /etc/postfix/standby_clients.cidr (a cidr table needs no postmap):"
    );
    for ip in &s.addresses {
        // `permit`, not `OK`: postscreen's access lists know only permit, dunno, reject
        // (and ignore the rest of the list at anything else); smtpd reads it as OK.
        let _ = writeln!(out, "{} permit", host_net(ip));
    }
    let _ = writeln!(
        out,
        "\n# 2. main.cf, when postscreen runs: the standby skips its tests. Put the table\n\
         #    first in your postscreen_access_list (this is the whole value when you have none):\n\
         postscreen_access_list = cidr:/etc/postfix/standby_clients.cidr, permit_mynetworks\n\
         \n\
         # 3. main.cf: the standby skips the client checks (DNSBLs, reverse DNS) and, after\n\
         #    relay control, the policy checks (SPF, greylisting, rate limits). Insert\n\
         #       check_client_access cidr:/etc/postfix/standby_clients.cidr\n\
         #    first in smtpd_client_restrictions, and in smtpd_recipient_restrictions right\n\
         #    after reject_unauth_destination, before any check_policy_service: e.g.\n\
         smtpd_recipient_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination, check_client_access cidr:/etc/postfix/standby_clients.cidr, check_policy_service unix:private/policyd-spf\n\
         #    Never add these addresses to mynetworks.\n\
         \n\
         # 4. /etc/postfix-policyd-spf-python/policyd-spf.conf: no SPF check of mail from the\n\
         #    standby (this replaces the default list, which it keeps; add any of yours):"
    );
    let mut skip = vec![
        "127.0.0.0/8".to_string(),
        "::ffff:127.0.0.0/104".to_string(),
        "::1".to_string(),
    ];
    skip.extend(s.addresses.iter().map(host_net));
    let _ = writeln!(
        out,
        "skip_addresses = {}\n\n# Then: postfix reload",
        skip.join(",")
    );
}

fn rspamd(out: &mut String, s: &Standby) {
    let _ = writeln!(
        out,
        "\n# /etc/rspamd/local.d/external_relay.conf: mail from the standby is judged by the\n\
         # client the standby's Received: header names (its `by` is the standby's name):\n\
         # (priority 9: after it, the settings below still see the standby's address)\n\
         enabled = true;\n\
         rules {{\n\
         \x20 STANDBY_MX {{\n\
         \x20   priority = 9;\n\
         \x20   strategy = \"hostname_map\";\n\
         \x20   hostname_map = \"${{LOCAL_CONFDIR}}/local.d/maps.d/standby_mx.map\";\n\
         \x20 }}\n\
         }}\n\
         # /etc/rspamd/local.d/maps.d/standby_mx.map (the value must be `direct`):\n\
         {host} direct\n\
         # The primary's MTA must pass rspamd the standby's name (Postfix's milter does, from\n\
         # reverse DNS): {host} must resolve to and from the standby's address.",
        host = s.hostname
    );
    if !s.addresses.is_empty() {
        let ips: Vec<String> = s.addresses.iter().map(|ip| format!("\"{ip}\"")).collect();
        let _ = writeln!(
            out,
            "\n# /etc/rspamd/local.d/settings.conf: no greylisting or rate limits for the standby:\n\
             standby_mx {{\n\
             \x20 priority = high;\n\
             \x20 ip = [{}];\n\
             \x20 apply {{\n\
             \x20   symbols_disabled = [\"GREYLIST_CHECK\", \"GREYLIST_SAVE\", \"RATELIMIT_CHECK\", \"RATELIMIT_UPDATE\"];\n\
             \x20 }}\n\
             }}",
            ips.join(", ")
        );
    }
    match &s.arc_domain {
        // The drain function (AWS) does not seal: only `standby serve` and `standby drain`.
        Some(domain) if !s.aws => {
            let _ = writeln!(
                out,
                "\n# /etc/rspamd/local.d/arc.conf: the standby seals what it hands back with ARC\n\
                 # ([arc] domain): trust its sets (ARC_ALLOW_TRUSTED), so its results count; a\n\
                 # DMARC failure is forgiven only where they say dmarc=pass (mail SES took in).\n\
                 # ARC_ALLOW_TRUSTED lowers the score of all the standby hands back, spam too:\n\
                 # filter at the standby as well ([filter] rspamd_url, dnsbl).\n\
                 whitelisted_signers_map = [\"{domain}\"];"
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "\n# With [arc] domain, selector and key in standby.toml, `standby serve` and\n\
                 # `standby drain` seal what they hand back, and this prints rspamd's arc.conf\n\
                 # trusting that domain (the AWS drain function does not seal)."
            );
        }
    }
    let _ = writeln!(out, "\n# Then: systemctl reload rspamd");
}

fn exchange(out: &mut String, s: &Standby) {
    if s.addresses.is_empty() {
        return;
    }
    let ips: Vec<String> = s.addresses.iter().map(ToString::to_string).collect();
    let ranges = ips.join(",");
    let quoted: Vec<String> = ips.iter().map(|ip| format!("\"{ip}\"")).collect();
    // An IPv6 connection lands on a connector bound to [::]:25.
    let bindings = if s.addresses.iter().any(IpAddr::is_ipv6) {
        "0.0.0.0:25,[::]:25"
    } else {
        "0.0.0.0:25"
    };
    let _ = writeln!(
        out,
        "\n# Exchange Management Shell. A receive connector for the standby alone, anonymous\n\
         # (not ExternalAuthoritative: that would also let the standby relay and send as\n\
         # internal senders), with the anti-spam agents bypassed:\n\
         New-ReceiveConnector -Name \"From standby-mx\" -TransportRole FrontendTransport -Usage Custom -Bindings {bindings} -RemoteIPRanges {ranges} -PermissionGroups AnonymousUsers\n\
         Get-ReceiveConnector \"From standby-mx\" | Add-ADPermission -User \"NT AUTHORITY\\ANONYMOUS LOGON\" -ExtendedRights ms-Exch-Bypass-Anti-Spam\n\
         # Sender ID and connection filtering look past the standby to the original client:\n\
         Set-TransportConfig -InternalSMTPServers @{{Add={}}}",
        quoted.join(",")
    );
}

fn mailcow(out: &mut String, s: &Standby) {
    if s.addresses.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n# mailcow: Configuration > Configuration & Details > Configuration > Forwarding Hosts:\n\
         # add each address below with \"Filter spam\" on (spam the standby passes on is tagged,\n\
         # never rejected, and greylisting and the SPF check do not apply). Or by the API:"
    );
    for ip in &s.addresses {
        let _ = writeln!(
            out,
            "curl -X POST https://<mailcow host>/api/v1/add/fwdhost -H \"X-API-Key: <key>\" -H \"Content-Type: application/json\" -d '{{\"hostname\":\"{ip}\",\"filter_spam\":\"1\"}}'"
        );
    }
}

/// The route for a drain without fixed addresses: it logs in on the submission port.
fn submission_route(out: &mut String, target: Target, s: &Standby) {
    let user = s
        .auth_user
        .as_deref()
        .unwrap_or("standby-drain@<a domain the primary does not host>");
    let _ = writeln!(
        out,
        "\n# The drain{} delivers on the submission port with AUTH as {user}: {}\n\
         # The account must be allowed to send with any envelope sender (the original one), and\n\
         # the primary must not DKIM-sign or ARC-seal what it sends: it is inbound mail, not the\n\
         # account's own (use an account in a domain the primary does not sign for).",
        if s.aws {
            " function (AWS Lambda, whose addresses change from run to run)"
        } else {
            ""
        },
        if s.aws {
            "the stack's PrimaryAddress = <primary>:587, PrimaryAuthUser and its password secret."
        } else {
            "[primary] address = \"<primary>:587\", auth_user, auth_password_env in standby.toml."
        }
    );
    let how = match target {
        Target::Postfix => format!(
            "# In master.cf's existing submission service (do not add a second one), the account\n\
             # must pass the sender checks: e.g. -o smtpd_sender_restrictions=check_sasl_access\n\
             # hash:/etc/postfix/standby_sasl,reject_sender_login_mismatch with the table line\n\
             #   {user} OK\n\
             # (reject_sender_login_mismatch refuses every original sender otherwise), and no\n\
             # SPF policy there."
        ),
        Target::Rspamd => format!(
            "# rspamd: the authenticated strategy reads the original client from the Received:\n\
             # header of mail that arrived with AUTH (beside STANDBY_MX in external_relay.conf):\n\
             \x20 STANDBY_MX_AUTH {{ strategy = \"authenticated\"; user_map = [\"{user}\"]; }}\n\
             # and no DKIM signing for it (local.d/dkim_signing.conf: sign_authenticated = false,\n\
             # or a settings rule for user \"{user}\" disabling DKIM_SIGNED and ARC_SIGNED)."
        ),
        Target::Exchange => format!(
            "# Exchange: the Client Frontend connector (587) takes the login; give the account\n\
             # the right to send as anyone:\n\
             Get-ReceiveConnector \"Client Frontend*\" | Add-ADPermission -User \"{user}\" -ExtendedRights ms-Exch-SMTP-Accept-Any-Sender"
        ),
        Target::Mailcow => format!(
            "# mailcow: a mailbox {user} for the drain, with \"Allow to send as *\" in its sender\n\
             # ACL (Mailbox > Edit > Sender ACL), and no DKIM key for its domain."
        ),
    };
    let _ = writeln!(out, "{how}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby() -> Standby {
        Standby {
            hostname: "standby.example.test".into(),
            addresses: vec![
                "192.0.2.10".parse().unwrap(),
                "2001:db8::10".parse().unwrap(),
            ],
            auth_user: None,
            aws: false,
            arc_domain: None,
        }
    }

    /// Every target names each address (or the host name) where the primary checks the
    /// client, and none hands out relay rights.
    #[test]
    fn each_target_exempts_the_standby_without_relay_rights() {
        let s = standby();
        for target in [
            Target::Postfix,
            Target::Rspamd,
            Target::Exchange,
            Target::Mailcow,
        ] {
            let text = render(target, &s);
            let settings: String = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n");
            assert!(
                !settings
                    .lines()
                    .any(|l| l.trim_start().starts_with("mynetworks")),
                "{target:?}: {text}"
            );
            assert!(
                !settings.contains("ExternalAuthoritative"),
                "{target:?}: {text}"
            );
            assert!(!settings.contains("submission inet"), "{target:?}: {text}");
            match target {
                Target::Rspamd => assert!(settings.contains("\nstandby.example.test direct\n")),
                _ => {
                    assert!(settings.contains("192.0.2.10"), "{target:?}: {text}");
                    assert!(settings.contains("2001:db8::10"), "{target:?}: {text}");
                }
            }
        }
        let postfix = render(Target::Postfix, &s);
        assert!(postfix.contains("192.0.2.10/32 permit\n2001:db8::10/128 permit\n"));
        // No placeholder in a parameter line: each can be pasted as it is.
        for l in postfix.lines().filter(|l| l.contains(" = ")) {
            assert!(!l.contains('<') && !l.starts_with("mynetworks"), "{l}");
        }
        assert!(postfix.contains(
            "skip_addresses = 127.0.0.0/8,::ffff:127.0.0.0/104,::1,192.0.2.10/32,2001:db8::10/128\n"
        ));
        // Relay control comes before the exemption: OK there cannot open a relay.
        let rr = postfix
            .lines()
            .find(|l| l.starts_with("smtpd_recipient_restrictions"))
            .unwrap();
        assert!(
            rr.find("reject_unauth_destination").unwrap() < rr.find("check_client_access").unwrap()
        );
    }

    /// With `[arc]` set, rspamd is told to trust the standby's ARC sets by their domain.
    #[test]
    fn rspamd_trusts_the_standbys_arc_domain() {
        let s = Standby {
            arc_domain: Some("arc.example.test".into()),
            ..standby()
        };
        let text = render(Target::Rspamd, &s);
        assert!(
            text.contains("\nwhitelisted_signers_map = [\"arc.example.test\"];\n"),
            "{text}"
        );
        let without = render(Target::Rspamd, &standby());
        assert!(!without.contains("whitelisted_signers_map ="), "{without}");
    }

    #[test]
    fn a_drain_without_fixed_addresses_gets_the_submission_route() {
        let s = Standby {
            addresses: vec![],
            aws: true,
            arc_domain: None,
            auth_user: Some("standby-drain@example.test".into()),
            ..standby()
        };
        let text = render(Target::Postfix, &s);
        assert!(
            text.contains("with AUTH as standby-drain@example.test"),
            "{text}"
        );
        assert!(text.contains("PrimaryAuthUser"), "{text}");
        assert!(text.contains("#   standby-drain@example.test OK"), "{text}");
        assert!(!text.contains("skip_addresses"), "{text}");
    }
}
