"""Production mode: with ORDERFLOW_ENVIRONMENT=production a process refuses to start on a development default.

The defaults make a checkout work against the local servers (the local Stripe server and its secrets, plain
AMQP, PostgreSQL without certificate checks). In production each of them would be a quiet hole: a test key that
charges nobody, a webhook secret anyone can read in this repository, customers' data in clear text on the
network. The production overlay sets ORDERFLOW_ENVIRONMENT=production; a process that still finds one of those
values then exits non-zero with one line on stderr naming every such setting, before it connects anything.

What counts as a development default is data (``PROCESS_RULES``): the setting's field, its environment
variable, and the check that says what is wrong with its value.
"""

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, SecretStr

Environment = Literal["development", "production"]

#: Says what is wrong with a setting's value in production, or None when nothing is.
Check = Callable[[str], str | None]

LOCAL_WEBHOOK_SECRET = "whsec_orderflow_local"
_TEST_KEY_PREFIXES = ("sk_test_", "rk_test_")
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


class RefusedInProduction(SystemExit):
    """A development default in force in production. A SystemExit: Python prints the one line on stderr, with no
    traceback, and exits 1; no ``except Exception`` on the way swallows it."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("refusing to start in production: " + "; ".join(problems))
        self.problems = problems


def local_webhook_secret(secret: str) -> str | None:
    if secret == LOCAL_WEBHOOK_SECRET:
        return f"is the local webhook secret ({LOCAL_WEBHOOK_SECRET}), published in this repository"
    return None


def stripe_test_key(key: str) -> str | None:
    if key.startswith(_TEST_KEY_PREFIXES):
        return f"is a test key ({key[:8]}...): it charges nobody"
    return None


def local_stripe_address(base: str) -> str | None:
    """Empty means api.stripe.com; anything plain-HTTP or on this host is a local Stripe-compatible server."""
    if not base:
        return None
    parts = urlsplit(base)
    if parts.scheme != "https" or (parts.hostname or "") in _LOCAL_HOSTS:
        return f"is a local Stripe server ({base}): leave it empty for api.stripe.com"
    return None


def oidc_not_https(url: str) -> str | None:
    """Empty means no OIDC; otherwise the issuer's keys, which decide who may act, come only over TLS."""
    if url and urlsplit(url).scheme != "https":
        return f"is not https ({url}): the issuer's keys decide who may act, so they come only over TLS"
    return None


def plain_amqp(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme != "amqps":
        return f"is plain AMQP ({parts.scheme}://): use amqps:// (port 5671) with the broker's CA (AMQP_CA_FILE)"
    if parse_qs(parts.query).get("no_verify_ssl", ["0"])[-1] != "0":
        return "turns the broker's certificate check off (no_verify_ssl)"
    return None


def database_without_verify_full(url: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """asyncpg's effective sslmode: the URL's, else PGSSLMODE, else prefer (no certificate check at all)."""
    mode = parse_qs(urlsplit(url).query).get("sslmode", [environ.get("PGSSLMODE", "prefer")])[-1]
    if mode != "verify-full":
        return f"has sslmode={mode}, not verify-full (the server's certificate and name unchecked)"
    return None


#: Every setting of a process (ProcessSettings and its subclasses) that must not keep a development default in
#: production: field name -> (environment variable, check). A process checks the fields it has.
PROCESS_RULES: dict[str, tuple[str, Check]] = {
    "amqp_url": ("AMQP_URL", plain_amqp),
    "database_url": ("DATABASE_URL", database_without_verify_full),
    "stripe_api_key": ("STRIPE_API_KEY", stripe_test_key),
    "stripe_api_base": ("STRIPE_API_BASE", local_stripe_address),
    "stripe_webhook_secret": ("STRIPE_WEBHOOK_SECRET", local_webhook_secret),
    "oidc_issuer": ("OIDC_ISSUER", oidc_not_https),
    "oidc_jwks_url": ("OIDC_JWKS_URL", oidc_not_https),
}


def problems(values: Iterable[tuple[str, str | None, Check]]) -> list[str]:
    """``VARIABLE what-is-wrong`` for each (variable, value, check) whose value is a development default."""
    found = []
    for variable, value, check in values:
        problem = check(value or "")
        if problem is not None:
            found.append(f"{variable} {problem}")
    return found


def refuse(values: Iterable[tuple[str, str | None, Check]]) -> None:
    """Raise RefusedInProduction naming every development default among ``values``."""
    found = problems(values)
    if found:
        raise RefusedInProduction(found)


def process_values(settings: BaseModel) -> list[tuple[str, str | None, Check]]:
    """The (variable, value, check) of each PROCESS_RULES field ``settings`` has, secrets unwrapped."""
    values = []
    for field, (variable, check) in PROCESS_RULES.items():
        if field in type(settings).model_fields:
            value = getattr(settings, field)
            values.append((variable, value.get_secret_value() if isinstance(value, SecretStr) else value, check))
    return values
