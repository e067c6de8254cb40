"""OIDC JWTs as the API's bearer tokens, beside the opaque ``ofl_`` ones (docs/security.md, "OIDC").

With OIDC_ISSUER set, a bearer token shaped like a JWT is verified against that issuer's public keys, by PyJWT:
the keys come from the issuer's JWKS (OIDC_JWKS_URL, or the ``jwks_uri`` of
``{issuer}/.well-known/openid-configuration``, read once), cached by PyJWKClient and fetched again when a token
names a key id the cache lacks (a rotation), at most once per cooldown so a flood of made-up key ids cannot turn
into a flood of requests to the identity provider. Only RS256 and ES256 are accepted (never ``none``, never an
HMAC algorithm whose "secret" would be the public key), the token's ``alg`` must be its key's, and ``exp``,
``iss``, ``aud`` and ``sub`` are required (``nbf`` too unless OIDC_REQUIRE_NBF=false), with a small leeway.

Any failed check is the same ``None`` an unknown opaque token gives, so the API answers the same 401. A token
that passes every check but carries no Orderflow role raises ``NoRole``: authenticated, not authorized (403).
"""

import asyncio
import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from orchestrator.api_tokens import Principal, Role

#: Asymmetric algorithms only: a public key can verify them but never make a signature.
ALGORITHMS = ("RS256", "ES256")
DEFAULT_ROLE_CLAIM = "orderflow_role"
DEFAULT_LEEWAY_SECONDS = 30.0
#: How long a fetched key set is used before it is fetched again, and the least time between two fetches an
#: unknown key id may force (PyJWKClient's lifespan and cooldown_duration).
KEYS_LIFESPAN_SECONDS = 300.0
REFRESH_COOLDOWN_SECONDS = 30.0
FETCH_TIMEOUT_SECONDS = 5.0
#: After a failed discovery, JWTs are answered 503 at once for this long instead of each trying again (and
#: each holding a worker thread for up to FETCH_TIMEOUT_SECONDS while the issuer is down).
DISCOVERY_RETRY_SECONDS = 5.0
#: Three base64url segments: what is tried as a JWT (an ``ofl_`` token never has a dot).
JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+=*\.[A-Za-z0-9_-]+=*\.[A-Za-z0-9_-]*=*$")
#: A principal's name is a label in audit entries and messages: kept short.
NAME_LIMIT = 200


class NoRole(Exception):
    """A valid JWT whose role claim names no Orderflow role: its subject is known, it may do nothing (403)."""

    def __init__(self, subject: str) -> None:
        super().__init__(f"the identity {subject!r} has no Orderflow role")
        self.subject = subject


class KeysUnavailable(Exception):
    """The issuer's discovery document or key set could not be fetched: the token can be neither accepted nor
    refused (503, Retry-After), rather than a 401 that would tell a valid holder their token is wrong."""


def looks_like_jwt(token: str) -> bool:
    return len(token) < 16384 and bool(JWT_SHAPE.match(token))


@dataclass(frozen=True, kw_only=True)
class OidcConfig:
    """What the orchestrator's OIDC_* settings say (orchestrator/main.py)."""

    issuer: str
    audience: str
    #: Empty: discovered from the issuer.
    jwks_url: str = ""
    #: The claim holding the role, a string or a list of strings; dots reach into objects
    #: (``realm_access.roles``).
    role_claim: str = DEFAULT_ROLE_CLAIM
    #: Values of the role claim that make an operator, and a viewer (an operator value wins).
    operator_values: frozenset[str] = frozenset({"operator"})
    viewer_values: frozenset[str] = frozenset({"viewer"})
    require_nbf: bool = True
    leeway_seconds: float = DEFAULT_LEEWAY_SECONDS
    refresh_cooldown_seconds: float = REFRESH_COOLDOWN_SECONDS


def split_values(text: str) -> frozenset[str]:
    """``a, b ,c`` -> {a, b, c}: the OIDC_*_VALUES settings are comma-separated."""
    return frozenset(v.strip() for v in text.split(",") if v.strip())


def claim_values(claims: dict[str, Any], path: str) -> list[str]:
    """The strings at a claim's dotted path: a string is one value, a list gives its strings, anything else none."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return []
        value = value.get(part)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def role_of(values: Iterable[str], config: OidcConfig) -> Role | None:
    found = set(values)
    if found & config.operator_values:
        return "operator"
    if found & config.viewer_values:
        return "viewer"
    return None


def principal_from(claims: dict[str, Any], config: OidcConfig) -> Principal:
    """The principal of verified claims: named by preferred_username, else email, else sub; NoRole without a role."""
    subject = str(claims["sub"])
    label = next((claims[c] for c in ("preferred_username", "email") if isinstance(claims.get(c), str)), subject)
    role = role_of(claim_values(claims, config.role_claim), config)
    if role is None:
        raise NoRole(subject[:NAME_LIMIT])
    return Principal(token_id=None, name=label[:NAME_LIMIT], role=role, subject=subject[:NAME_LIMIT])


def _get_json(url: str) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "orderflow"})
    with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_SECONDS) as response:  # noqa: S310 - http(s) only
        return json.loads(response.read(1 << 20))


class OidcVerifier:
    """Verifies JWTs of one issuer. ``verify`` blocks (it may fetch keys); ``authenticate`` runs it in a thread."""

    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        self._client: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()
        self._discovery_failed_at = -DISCOVERY_RETRY_SECONDS

    def discovered_jwks_url(self) -> str:
        """The issuer's ``jwks_uri``; its discovery document must name the same issuer (OIDC Discovery 1.0, 4.3)."""
        url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = _get_json(url)
        if not isinstance(document, dict) or document.get("issuer") != self.config.issuer:
            raise KeysUnavailable(f"{url} does not describe the issuer {self.config.issuer}")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise KeysUnavailable(f"{url} names no http(s) jwks_uri")
        return jwks_uri

    def client(self) -> jwt.PyJWKClient:
        """The key set's client, made on first use (discovery is one request, retried until it succeeds once)."""
        with self._lock:
            if self._client is None:
                if time.monotonic() - self._discovery_failed_at < DISCOVERY_RETRY_SECONDS:
                    raise KeysUnavailable("the issuer's discovery document could not be read a moment ago")
                try:
                    jwks_url = self.config.jwks_url or self.discovered_jwks_url()
                except (OSError, ValueError, KeysUnavailable) as exc:
                    self._discovery_failed_at = time.monotonic()
                    if isinstance(exc, KeysUnavailable):
                        raise
                    raise KeysUnavailable(f"the issuer's discovery document could not be read: {exc}") from exc
                self._client = jwt.PyJWKClient(
                    jwks_url,
                    lifespan=KEYS_LIFESPAN_SECONDS,
                    timeout=FETCH_TIMEOUT_SECONDS,
                    cooldown_duration=self.config.refresh_cooldown_seconds,
                )
            return self._client

    def signing_key(self, token: str) -> jwt.PyJWK | None:
        """The key the token names by its ``kid``; None when the key set has no such key even after a refresh."""
        client = self.client()
        try:
            return client.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise KeysUnavailable(f"the issuer's keys could not be fetched: {exc}") from exc
        except jwt.PyJWKClientError:
            return None  # no key with that kid (or no kid): refused like a wrong signature
        except (OSError, ValueError) as exc:  # a connection dropped mid-answer, a key set that is not JSON
            raise KeysUnavailable(f"the issuer's keys could not be fetched: {exc}") from exc

    def claims(self, token: str) -> dict[str, Any] | None:
        """The verified claims of a token; None when any check fails."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        if header.get("alg") not in ALGORITHMS:
            return None  # none, HS*, anything else: refused before any key is looked up
        key = self.signing_key(token)
        if key is None:
            return None
        required = ["exp", "iss", "aud", "sub"] + (["nbf"] if self.config.require_nbf else [])
        try:
            return jwt.decode(
                token,
                key,  # a PyJWK: PyJWT also holds the header's alg to the key's own
                algorithms=list(ALGORITHMS),
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_seconds,
                options={"require": required, "verify_signature": True},
            )
        except jwt.PyJWTError:
            return None

    def verify(self, token: str) -> Principal | None:
        """The principal of a valid JWT; None when it is not one (any check failed); NoRole, KeysUnavailable."""
        if not looks_like_jwt(token):
            return None
        claims = self.claims(token)
        if claims is None or not isinstance(claims.get("sub"), str) or not claims["sub"]:
            return None
        return principal_from(claims, self.config)

    async def authenticate(self, token: str) -> Principal | None:
        return await asyncio.to_thread(self.verify, token)
