"""A small OIDC identity provider for the tests: keys made here (cryptography), its discovery document and key set
served over HTTP from a thread, and JWTs signed with its keys (PyJWT, as an issuer would sign them).

``FakeIssuer`` is not Orderflow's code: it stands for the identity provider, so what the orchestrator fetches and
verifies is exercised for real.
"""

import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AUDIENCE = "orderflow-api"


def new_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def new_ec() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FakeIssuer:
    """Serves ``/.well-known/openid-configuration`` and ``/jwks`` for the keys in ``keys`` (kid -> private key),
    which a test may change (a rotation); counts the key set's fetches."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {"k1": new_rsa()}
        self.jwks_fetches = 0
        self.discovery_requests = 0
        #: True: the discovery document answers 503 (an issuer that is down).
        self.discovery_down = False
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path == "/.well-known/openid-configuration":
                    issuer.discovery_requests += 1
                    if issuer.discovery_down:
                        self.send_error(503)
                        return
                    body = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"}
                elif self.path == "/jwks":
                    issuer.jwks_fetches += 1
                    body = issuer.jwks()
                else:
                    self.send_error(404)
                    return
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in list(self.keys.items()):
            jwk = json.loads(_public_jwk(key))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": _alg(key)})
        return {"keys": keys}

    def token(self, claims: dict[str, Any] | None = None, *, kid: str = "k1", key: Any = None, **overrides: Any) -> str:
        """A JWT signed with ``key`` (default: the key ``kid`` names), valid now for five minutes unless
        ``claims``/``overrides`` say otherwise (an override of None drops the claim)."""
        now = int(time.time())
        body = {"iss": self.url, "aud": AUDIENCE, "sub": "user-1", "iat": now, "nbf": now - 5, "exp": now + 300}
        body.update(claims or {})
        body.update(overrides)
        body = {k: v for k, v in body.items() if v is not None}
        signer = key if key is not None else self.keys[kid]
        return jwt.encode(body, signer, algorithm=_alg(signer), headers={"kid": kid})

    def public_pem(self, kid: str = "k1") -> bytes:
        return (
            self.keys[kid]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    def forged(self, alg: str, claims: dict[str, Any] | None = None, *, kid: str = "k1") -> str:
        """A token an attacker makes: ``none`` (no signature) or ``HS256`` keyed with the issuer's public key."""
        now = int(time.time())
        body = {"iss": self.url, "aud": AUDIENCE, "sub": "mallory", "nbf": now - 5, "exp": now + 300}
        body.update(claims or {})
        signing_input = (
            f"{b64(json.dumps({'alg': alg, 'typ': 'JWT', 'kid': kid}).encode())}.{b64(json.dumps(body).encode())}"
        )
        if alg == "none":
            return signing_input + "."
        signature = hmac.new(self.public_pem(kid), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(signature)}"

    @contextlib.contextmanager
    def serving(self) -> Iterator["FakeIssuer"]:
        thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join(timeout=5)


def _alg(key: Any) -> str:
    return "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"


def _public_jwk(key: Any) -> str:
    algorithm = jwt.algorithms.ECAlgorithm if _alg(key) == "ES256" else jwt.algorithms.RSAAlgorithm
    return algorithm.to_jwk(key.public_key())
