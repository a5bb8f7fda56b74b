#!/usr/bin/env python3
"""Checks a tripline webhook request, as a receiver would (Python 3, standard library only).

    verify(secret, headers, body) -> bool

`secret` is the endpoint's configured secret (`whsec_...` or plain text), `headers` the request's
headers (lower-case names), `body` the raw request body as bytes, before any JSON parsing.

Run as a script to check one request: verify_webhook.py SECRET ID TIMESTAMP SIGNATURE BODY_FILE
(exit status 0: valid).
"""
import base64
import hashlib
import hmac
import sys
import time

TOLERANCE_S = 5 * 60  # refuse replays of old requests


def key_bytes(secret):
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode()


def verify(secret, headers, body, now=None, tolerance=TOLERANCE_S):
    msg_id = headers["webhook-id"]
    timestamp = headers["webhook-timestamp"]
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > tolerance:
        return False
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key_bytes(secret), signed, hashlib.sha256).digest())
    # The header may hold several space-separated signatures (key rotation).
    for sig in headers["webhook-signature"].split(" "):
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return True
    return False


if __name__ == "__main__":
    secret, msg_id, timestamp, signature, body_file = sys.argv[1:6]
    with open(body_file, "rb") as f:
        body = f.read()
    headers = {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}
    sys.exit(0 if verify(secret, headers, body) else 1)
