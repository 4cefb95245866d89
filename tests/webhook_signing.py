"""Signing webhook bodies the way RealtimeKit and Livepeer do, for tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from functools import cache

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


@cache
def rtk_private_key() -> rsa.RSAPrivateKey:
    """One RSA key per test session (generating one takes a noticeable moment)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def other_private_key() -> rsa.RSAPrivateKey:
    """A second key: its signatures must not verify against the first key's public half."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(private_key: rsa.RSAPrivateKey | None = None) -> str:
    key = private_key or rtk_private_key()
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def rtk_sign(private_key: rsa.RSAPrivateKey, body: bytes) -> str:
    """The `rtk-signature` header value: base64 of an RSA PKCS#1 v1.5 SHA-256 signature of the body."""
    return base64.b64encode(private_key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()


def livepeer_signature(secret: str, body: bytes, t_ms: int | None = None) -> str:
    """The `Livepeer-Signature` header value: `t=<ms>,v1=<hex HMAC-SHA256 of the body>`."""
    t = int(time.time() * 1000) if t_ms is None else t_ms
    return f"t={t},v1={hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}"
