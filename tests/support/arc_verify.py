#!/usr/bin/python3
"""Check a message's ARC chain with dkimpy, an implementation independent of mail-auth,
against keys given on the command line instead of DNS.

    arc_verify.py MESSAGE SELECTOR DOMAIN PUBLIC_KEY_PEM [SELECTOR DOMAIN PUBLIC_KEY_PEM ...]

Prints the chain's validation (pass, fail or none) and dkimpy's reason; exits 0.
"""
import sys

import dkim


def main():
    path, rest = sys.argv[1], sys.argv[2:]
    records = {}
    for i in range(0, len(rest), 3):
        selector, domain, pub_pem = rest[i:i + 3]
        der = "".join(l for l in open(pub_pem).read().splitlines() if "-----" not in l)
        records[f"{selector}._domainkey.{domain}.".encode()] = f"v=DKIM1; k=rsa; p={der}".encode()

    def dnsfunc(name, timeout=5):
        return records.get(name)

    msg = open(path, "rb").read()
    cv, _results, reason = dkim.arc_verify(msg, dnsfunc=dnsfunc)
    print(cv.decode() if cv else "none", reason)


main()
