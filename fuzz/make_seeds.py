#!/usr/bin/env python3
"""Writes the seed corpus for the smtp_session target (corpus/smtp_session/).

Each seed is a script in the target's input format (src/script.rs):
connections separated by NUL, each a flags byte followed by what the
client writes. Run it again after changing a seed; the files are committed.
"""
import base64
import pathlib

# Flags (src/script.rs): the end mode in bits 0-1 (idling: both, with
# bit 7, which BASE sets), then one bit each.
HALF_CLOSE, QUIET, RESET, IDLE = 0, 1, 2, 3
LINES, PAUSE, GREET, TLS, LINGER = 4, 8, 16, 32, 64
BASE = 0x80  # keeps the byte non-zero: NUL separates connections


def conn(flags, *lines, raw=b""):
    text = b"".join(l.encode() + b"\r\n" for l in lines) + raw
    return bytes([BASE | flags]) + text


def script(*conns):
    return b"\0".join(conns)


PLAIN = base64.b64encode(b"\0alice\0secret").decode()
USER = base64.b64encode(b"alice").decode()
PASSWORD = base64.b64encode(b"secret").decode()
ENVELOPE = ["EHLO client.example", "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.org>"]

SEEDS = {
    "session": script(conn(LINES | GREET, *ENVELOPE, "DATA", "Subject: hi", "", "hello", ".", "QUIT")),
    "pipelined": script(conn(HALF_CLOSE, *ENVELOPE, "RCPT TO:<c@example.org>", "DATA",
                             "Subject: x", "", "..stuffed", ".", "NOOP", "QUIT")),
    "bdat": script(conn(GREET, *ENVELOPE, raw=b"BDAT 10\r\n0123456789BDAT 5 LAST\r\nabcdeQUIT\r\n")),
    "bdat_empty_last": script(conn(LINES, *ENVELOPE, "BDAT 3", "abc", "BDAT 0 LAST", "QUIT")),
    "bdat_no_rcpt": script(conn(HALF_CLOSE, "EHLO x", raw=b"BDAT 4 LAST\r\nwxyzNOOP\r\n")),
    "auth_plain": script(conn(LINES | GREET, "EHLO x", f"AUTH PLAIN {PLAIN}", "AUTH PLAIN", PLAIN, "QUIT")),
    "auth_login": script(conn(LINES, "EHLO x", "AUTH LOGIN", USER, PASSWORD,
                              f"AUTH LOGIN {USER}", "*", "AUTH CRAM-MD5", "QUIT")),
    "starttls": script(conn(TLS | GREET, "EHLO x", "STARTTLS", *ENVELOPE, "STARTTLS",
                            "DATA", "secret", ".", "QUIT")),
    "starttls_pipelined_junk": script(conn(HALF_CLOSE, "EHLO x", "STARTTLS", "MAIL FROM:<smuggled@x>")),
    "too_big": script(conn(HALF_CLOSE, *ENVELOPE, "DATA", *(["x" * 70] * 6), ".", "QUIT")),
    "broken_lines": script(conn(LINES | PAUSE, "MAIL FROM:<a@b>", "FROBNICATE", "RCPT TO:<nope",
                                "EHLO", "DATA", "MAIL FROM:<a@b> SIZE=99999999999 BODY=8BITMIME",
                                "MAIL FROM:<a@b>", "HELO h", "MAIL FROM:<a@b> FOO=bar",
                                "VRFY root", "RSET", "x" * 300, raw=b"EHLO bare-lf\nNOOP\r\r\nQUI")),
    "overlapping": script(conn(QUIET | LINGER, "EHLO one", "MAIL FROM:<a@b>", "DATA"),
                          conn(HALF_CLOSE, *ENVELOPE, "DATA", "x", ".", "QUIT"),
                          conn(RESET, *ENVELOPE, "DATA", "cut off in the middle")),
    "idle": script(conn(IDLE | GREET, "EHLO idle", "MAIL FROM:<a@b>")),
    "early_talker": script(conn(QUIET, "EHLO fast", "QUIT", "NOOP")),
}

out = pathlib.Path(__file__).parent / "corpus" / "smtp_session"
out.mkdir(parents=True, exist_ok=True)
for name, data in SEEDS.items():
    assert len(data) < 4096, name  # libFuzzer's default -max_len
    (out / name).write_bytes(data)
print(f"{len(SEEDS)} seeds in {out}")
