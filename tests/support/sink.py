"""An SMTP sink for the delivery tests: aiosmtpd, a real SMTP server.

Usage: sink.py DIR [--fail-first N] [--reject DOMAIN] [--delay SECS]

Listens on a free loopback port and prints it on the first line of stdout.
Each accepted message is written to DIR as NNNN.eml (the DATA content
exactly as received, after dot-unstuffing) and NNNN.json (envelope).
--fail-first N answers the first N messages for each recipient with 451
after their data; --reject DOMAIN refuses recipients in DOMAIN with 550 at
RCPT; --delay SECS waits that long before answering the end of data.
"""

import argparse
import asyncio
import json
import os

from aiosmtpd.smtp import SMTP


class Sink:
    def __init__(self, args):
        self.args = args
        self.count = 0
        self.seen = {}

    async def handle_RCPT(self, server, session, envelope, address, options):
        if self.args.reject and address.endswith("@" + self.args.reject):
            return "550 5.1.1 <%s>: recipient rejected by the sink" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.args.delay:
            await asyncio.sleep(self.args.delay)
        key = ",".join(envelope.rcpt_tos)
        self.seen[key] = self.seen.get(key, 0) + 1
        if self.seen[key] <= self.args.fail_first:
            return "451 4.3.0 try again later (attempt %d)" % self.seen[key]
        self.count += 1
        base = os.path.join(self.args.dir, "%04d" % self.count)
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content)
        meta = {"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos}
        with open(base + ".json", "w") as f:
            json.dump(meta, f)
        os.rename(base + ".eml.tmp", base + ".eml")
        return "250 2.0.0 OK stored as %04d" % self.count


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--reject")
    parser.add_argument("--delay", type=float, default=0)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    sink = Sink(args)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(
            lambda: SMTP(sink, hostname="sink.test", enable_SMTPUTF8=True, loop=loop),
            "127.0.0.1",
            0,
        )
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    loop.run_forever()


main()
