"""Outpost's events from a webhook sink, each handled once.

Checks X-Outpost-Signature (HMAC-SHA256 of the body under the sink's secret) before it
trusts a body, skips an event whose ce-id it has seen (the hub sends an event again when
it did not get a 2xx in time; ids are kept in memory), and answers 204 so the hub sends
the next. The hub posts plain http only to a loopback address: from another machine,
put HTTPS in front.

    .venv/bin/python examples/webhook_receiver.py SECRET_FILE [PORT]
"""

import hashlib
import hmac
import json
import sys
from collections import OrderedDict
from pathlib import Path

from aiohttp import web

SECRET = Path(sys.argv[1]).read_text(encoding="utf-8").strip().encode()  # as the hub reads it
PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 8080
KEEP = 100_000  # ids remembered: a repeat comes soon after the first copy
seen: OrderedDict[str, None] = OrderedDict()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


async def receive(request: web.Request) -> web.Response:
    body = await request.read()
    if not verify(SECRET, body, request.headers.get("X-Outpost-Signature", "")):
        return web.Response(status=401, text="bad signature")
    event_id = request.headers.get("ce-id", "")
    if event_id not in seen:
        event = json.loads(body)
        print(event_id, event["type"], event.get("subject", "-"), flush=True)  # the work
        seen[event_id] = None
        if len(seen) > KEEP:
            seen.popitem(last=False)
    return web.Response(status=204)


app = web.Application()
app.router.add_post("/", receive)
web.run_app(app, host="127.0.0.1", port=PORT)
