#!/usr/bin/env python3
"""Python's imaplib and poplib against two `standby serve` nodes on one S3 bucket and
DynamoDB table (tests/aws_serve.rs).

  imap_nodes.py A_IMAP A_POP3 A_SMTP B_IMAP B_POP3 B_SMTP USER PASSWORD

Checks, printing a transcript and exiting 1 at the first failure: a message node A took
is in the mailbox at both nodes with the same UIDVALIDITY and UID; a flag set at A is
seen at B; IDLE at A reports a message A takes within a second or so and one B takes at
the next poll (within 30 s); POP3's UIDL is the same at both; a message expunged at B is
gone at A.
"""
import imaplib
import poplib
import smtplib
import sys
import time

a_imap, a_pop3, a_smtp, b_imap, b_pop3, b_smtp = (int(x) for x in sys.argv[1:7])
user, password = sys.argv[7:9]


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        sys.exit(1)


def send(port, token):
    with smtplib.SMTP("127.0.0.1", port) as s:
        s.sendmail(
            "dave@example.org",
            [user],
            f"From: dave@example.org\r\nSubject: {token}\r\n\r\nbody of {token}\r\n".encode(),
        )


def login(port):
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login(user, password)
    return m


def uids(m):
    typ, data = m.uid("FETCH", "1:*", "(UID FLAGS)")
    out = {}
    for line in data:
        if not line:
            continue
        text = line.decode()
        uid = int(text.split("UID ")[1].split()[0].rstrip(")"))
        out[uid] = text.split("FLAGS (")[1].split(")")[0]
    return out


def start_idle(m, tag):
    """IDLE, up to the server's continuation."""
    m.send(f"{tag} IDLE\r\n".encode())
    line = m.readline()
    check(line.startswith(b"+"), f"IDLE continuation {line!r}")
    return line


def wait_exists(m, since, timeout):
    """The first EXISTS line within `timeout` s, and the seconds since `since`."""
    m.sock.settimeout(timeout)
    while True:
        line = m.readline()
        if b"EXISTS" in line:
            return line, time.time() - since


def end_idle(m, tag):
    m.send(b"DONE\r\n")
    while True:
        line = m.readline()
        if line.startswith(f"{tag} ".encode()):
            check(b"OK" in line, f"IDLE ended {line!r}")
            return


send(a_smtp, "first-at-a")
ma = login(a_imap)
typ, data = ma.select("INBOX")
check(typ == "OK" and int(data[0]) == 1, f"A: SELECT INBOX {data}")
validity_a = ma.response("UIDVALIDITY")[1][0]
typ, data = ma.fetch("1", "(UID BODY.PEEK[])")
check(b"body of first-at-a" in data[0][1], "A: the message's bytes")
ma.store("1", "+FLAGS", "(\\Seen)")

mb = login(b_imap)
typ, data = mb.select("INBOX")
validity_b = mb.response("UIDVALIDITY")[1][0]
check(validity_a == validity_b, f"one UIDVALIDITY at both nodes: {validity_a} {validity_b}")
at_b = uids(mb)
check(list(at_b) == [1] and "\\Seen" in at_b[1], f"B: the same UID, with A's \\Seen: {at_b}")
mb.logout()

# IDLE at A: mail A takes is reported at once, mail B takes at the next poll.
start_idle(ma, "I1")
sent = time.time()
send(a_smtp, "second-at-a")
line, took = wait_exists(ma, sent, 10)
check(took < 1.5, f"A's own mail reported in {took:.2f} s: {line!r}")
end_idle(ma, "I1")
start_idle(ma, "I2")
sent = time.time()
send(b_smtp, "third-at-b")
line, took = wait_exists(ma, sent, 40)
check(took <= 30, f"B's mail reported at A's next poll, in {took:.1f} s: {line!r}")
end_idle(ma, "I2")
at_a = uids(ma)
check(list(at_a) == [1, 2, 3], f"A: UIDs in arrival order {at_a}")

# POP3: the same UIDL at both nodes.
def uidl(port):
    p = poplib.POP3("127.0.0.1", port)
    p.user(user)
    p.pass_(password)
    out = [line.split()[1] for line in p.uidl()[1]]
    p.quit()
    return out


ua, ub = uidl(a_pop3), uidl(b_pop3)
check(len(ua) == 3 and ua == ub, f"POP3 UIDL the same at both nodes: {ua} {ub}")

# Expunged at B, gone at A.
mb = login(b_imap)
mb.select("INBOX")
mb.uid("STORE", "2", "+FLAGS", "(\\Deleted)")
mb.expunge()
mb.logout()
ma.noop()
check(list(uids(ma)) == [1, 3], f"A: UID 2 gone after B's EXPUNGE {uids(ma)}")
ma.logout()
check(len(uidl(a_pop3)) == 2, "POP3 at A: two left")
