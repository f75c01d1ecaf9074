#!/usr/bin/python3
"""Verify a message's DKIM signatures with dkimpy, an implementation independent of
mail-auth, against keys given on the command line instead of DNS.

    dkim_verify.py MESSAGE SELECTOR DOMAIN PUBLIC_KEY_PEM

Prints the d= of each signature that verifies; exits 1 when none does.
"""
import base64
import sys

import dkim


def main():
    path, selector, domain, pub_pem = sys.argv[1:5]
    der = "".join(l for l in open(pub_pem).read().splitlines() if "-----" not in l)
    record = f"v=DKIM1; k=rsa; p={der}".encode()
    want = f"{selector}._domainkey.{domain}.".encode()

    def dnsfunc(name, timeout=5):
        return record if name == want else None

    msg = open(path, "rb").read()
    d = dkim.DKIM(msg)
    n = len([h for h in d.headers if h[0].lower() == b"dkim-signature"])
    ok = [i for i in range(n) if d.verify(idx=i, dnsfunc=dnsfunc)]
    if not ok:
        print("no signature verifies", file=sys.stderr)
        sys.exit(1)
    print(" ".join(str(i) for i in ok))


main()
