#!/usr/bin/env python3
"""Python's imaplib against the standby's IMAP listener (tests/mail_access.rs).

  imap_check.py PLAIN_PORT TLS_PORT CA USER PASSWORD SMTP_PORT

Checks, printing a transcript and exiting 1 at the first failure: LOGIN refused before
STARTTLS (and offered after), a wrong password, SEARCH (FROM, SUBJECT, TEXT, UNSEEN,
UID sets), partial BODY fetches, IDLE seeing a message the listener accepts meanwhile,
STORE and EXPUNGE hiding a message from this user's view only.
"""
import imaplib
import json
import smtplib
import socket
import ssl
import sys
import time

plain, tls_port, ca, user, password, smtp_port = sys.argv[1:7]
plain, tls_port, smtp_port = int(plain), int(tls_port), int(smtp_port)
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        sys.exit(1)


# Before STARTTLS: LOGINDISABLED, LOGIN refused.
m = imaplib.IMAP4("127.0.0.1", plain)
caps = m.capabilities
check("LOGINDISABLED" in caps and "STARTTLS" in caps, f"plain capabilities {caps}")
try:
    m.login(user, password)
    check(False, "LOGIN before STARTTLS refused")
except imaplib.IMAP4.error as e:
    check("PRIVACYREQUIRED" in str(e) or "STARTTLS" in str(e), f"LOGIN before STARTTLS refused: {e}")
m.starttls(ssl_context=ctx)
check("AUTH=PLAIN" in m.capabilities, f"after STARTTLS {m.capabilities}")
try:
    m.login(user, password + "x")
    check(False, "wrong password refused")
except imaplib.IMAP4.error as e:
    check("AUTHENTICATIONFAILED" in str(e), f"wrong password refused: {e}")
typ, _ = m.login(user, password)
check(typ == "OK", "LOGIN after STARTTLS")
typ, data = m.select("INBOX")
count = int(data[0])
check(typ == "OK" and count >= 3, f"SELECT INBOX: {count} messages")

typ, data = m.search(None, "FROM", "carol@example.org")
carol = data[0].split()
check(len(carol) == 1, f"SEARCH FROM carol: {carol}")
typ, data = m.search(None, "SUBJECT", "dotted")
check(len(data[0].split()) == 1, f"SEARCH SUBJECT dotted: {data}")
typ, data = m.search(None, "TEXT", "needle-in-the-body")
check(len(data[0].split()) == 1, f"SEARCH TEXT: {data}")
typ, data = m.search(None, "UNSEEN")
check(len(data[0].split()) == count, f"SEARCH UNSEEN (all): {data}")
typ, data = m.uid("SEARCH", None, "UID", "1:*")
uids = [int(u) for u in data[0].split()]
check(uids == sorted(uids) and len(uids) == count, f"UID SEARCH 1:*: {uids}")
typ, data = m.search(None, "UID", f"{uids[-1]}:*")
check(data[0].split() == [str(count).encode()], f"SEARCH UID last:*: {data}")

# Partial fetches.
typ, data = m.fetch(carol[0], "(BODY.PEEK[]<0.10> RFC822.SIZE)")
head = data[0][1]
check(len(head) == 10, f"BODY.PEEK[]<0.10>: {head!r}")
typ, data = m.fetch(carol[0], "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
check(b"Subject:" in data[0][1], f"HEADER.FIELDS: {data[0][1]!r}")
typ, data = m.fetch(carol[0], "(BODY.PEEK[TEXT]<5.7>)")
check(len(data[0][1]) == 7, f"BODY[TEXT]<5.7>: {data[0][1]!r}")
typ, data = m.fetch(carol[0], "(FLAGS)")
check(b"\\Seen" not in data[0], f"PEEK leaves unseen: {data}")
typ, data = m.fetch(carol[0], "(BODY[]<0.1>)")
check(b"\\Seen" in b" ".join(x if isinstance(x, bytes) else x[0] for x in data), f"BODY[] sets \\Seen: {data}")
typ, data = m.fetch("1:*", "(ENVELOPE BODYSTRUCTURE INTERNALDATE)")
check(typ == "OK" and b"ENVELOPE" in data[0], "ENVELOPE and BODYSTRUCTURE")

# IDLE: a message the listener accepts meanwhile is reported.
m.send(b"I1 IDLE\r\n")
line = m.readline()
check(line.startswith(b"+"), f"IDLE continuation {line!r}")
start = time.time()
with smtplib.SMTP("127.0.0.1", smtp_port) as s:
    s.sendmail("dave@example.org", [user], b"From: dave@example.org\r\nSubject: during idle\r\n\r\nhello\r\n")
sent = time.time()
m.sock.settimeout(10)
line = m.readline()
took = time.time() - sent
check(line.startswith(b"*") and b"EXISTS" in line, f"IDLE pushed {line!r} {took:.2f} s after the 250")
check(took < 1.5, f"within a second or so ({took:.2f} s)")
m.send(b"DONE\r\n")
while True:
    line = m.readline()
    if line.startswith(b"I1 "):
        check(b"OK" in line, f"IDLE ended {line!r}")
        break

# A second session of the same user: flags one sets are told to the other at NOOP, and
# a change the other makes later from its stale copy does not undo them.
m2 = imaplib.IMAP4_SSL("127.0.0.1", tls_port, ssl_context=ctx)
m2.login(user, password)
m2.select("INBOX")
typ, data = m.select("INBOX")
before = int(data[0])
m.store(carol[0], "+FLAGS", "(\\Flagged)")
typ, data = m2.noop()
told = m2.untagged_responses.get("FETCH", [])
check(any(b"\\Flagged" in x for x in told), f"the other session told of \\Flagged: {told}")
m2.store(carol[0], "+FLAGS", "(\\Answered)")
m.noop()
typ, data = m.fetch(carol[0], "(FLAGS)")
check(b"\\Flagged" in data[0] and b"\\Answered" in data[0], f"both sessions' flags kept: {data}")

# STORE \Deleted + EXPUNGE hides the message from this user's view.
typ, data = m.store(carol[0], "+FLAGS", "(\\Deleted)")
check(typ == "OK", f"STORE +FLAGS \\Deleted: {data}")
typ, data = m.expunge()
check(typ == "OK" and data[0] is not None, f"EXPUNGE: {data}")
typ, data = m.select("INBOX")
check(int(data[0]) == before - 1, f"one fewer after EXPUNGE: {data}")
typ, data = m.search(None, "FROM", "carol@example.org")
check(data[0] == b"", f"carol's message gone from the view: {data}")
# The other session, still showing it, reads it (setting \\Seen): it stays hidden.
m2.fetch(carol[0], "(BODY[]<0.1>)")
m2.logout()
m3 = imaplib.IMAP4_SSL("127.0.0.1", tls_port, ssl_context=ctx)
m3.login(user, password)
typ, data = m3.select("INBOX")
check(int(data[0]) == before - 1, f"still hidden after the other session's read: {data}")
m3.logout()
m.logout()

# Implicit TLS works too.
m = imaplib.IMAP4_SSL("127.0.0.1", tls_port, ssl_context=ctx)
m.login(user, password)
typ, data = m.status("INBOX", "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)")
check(typ == "OK", f"STATUS over implicit TLS: {data}")
m.logout()
print(json.dumps({"ok": True}))
