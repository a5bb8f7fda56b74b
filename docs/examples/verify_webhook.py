#!/usr/bin/env python3
"""Checks a tripline webhook request, as a receiver would (Python 3, standard library only).

    verify(secret, headers, body) -> bool

`secret` is the endpoint's configured secret (`whsec_...` or plain text), `headers` the request's
headers (lower-case names), `body` the raw request body as bytes, before any JSON parsing. A request
with a missing or malformed header is refused (False); a secret that is not one tripline would
accept (`whsec_` with invalid base64, fewer than 16 bytes) raises ValueError, as a configuration
error.

Run as a script to check one request: verify_webhook.py SECRET ID TIMESTAMP SIGNATURE BODY_FILE
(exit status 0: valid).
"""
import base64
import binascii
import hashlib
import hmac
import sys
import time

TOLERANCE_S = 5 * 60  # refuse replays of old requests


MIN_KEY_BYTES = 16  # as tripline requires of a configured secret


def key_bytes(secret):
    """The signing key a secret stands for; ValueError for one tripline would refuse."""
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret[len("whsec_"):], validate=True)
        except binascii.Error as e:
            raise ValueError(f"a whsec_ secret must be base64 after the prefix: {e}") from None
    else:
        key = secret.encode()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the secret is {len(key)} bytes; use at least {MIN_KEY_BYTES}")
    return key


def verify(secret, headers, body, now=None, tolerance=TOLERANCE_S):
    key = key_bytes(secret)
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id or not signatures or not timestamp or not timestamp.isascii() \
            or not timestamp.isdigit():
        return False
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > tolerance:
        return False
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    # The header may hold several space-separated signatures (key rotation).
    for sig in signatures.split(" "):
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return True
    return False


def self_test():
    """The Standard Webhooks test vector, and requests that must be refused."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    assert verify(secret, headers, body, now=1614265330)
    assert not verify(secret, headers, b"{}", now=1614265330)
    for name in headers:
        assert not verify(secret, {k: v for k, v in headers.items() if k != name}, body,
                          now=1614265330), f"missing {name}"
    for bad in ["", "soon", "-1614265330", "1614265330.0", "\u0661\u0666"]:
        assert not verify(secret, {**headers, "webhook-timestamp": bad}, body,
                          now=1614265330), f"timestamp {bad!r}"
    for bad_secret in ["whsec_!!!", "whsec_", "short"]:
        try:
            verify(bad_secret, headers, body, now=1614265330)
        except ValueError:
            continue
        raise AssertionError(f"secret {bad_secret!r} accepted")
    print("verify_webhook.py: self-test passed")


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        sys.exit(0)
    secret, msg_id, timestamp, signature, body_file = sys.argv[1:6]
    with open(body_file, "rb") as f:
        body = f.read()
    headers = {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}
    sys.exit(0 if verify(secret, headers, body) else 1)
