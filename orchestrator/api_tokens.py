"""Bearer tokens for the orchestrator's API: made, listed, revoked (``orderctl token``) and looked up (the API's
auth middleware, orchestrator/api_auth.py). Table ``api_token``, migration 0005.

A token is ``ofl_`` followed by 32 random bytes in URL-safe base64: the prefix lets secret scanners (GitHub's,
gitleaks) recognise a leaked one. Only its SHA-256 is stored: 256 random bits cannot be found from their hash
by guessing, so a fast unsalted hash is right here (a password hash's slowness would only tax each request).
Looking a token up by its hash also makes a constant-time comparison moot: the database compares hashes,
which an attacker cannot choose to share a prefix with a real token's.
"""

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal, get_args

import asyncpg

Role = Literal["viewer", "operator"]
ROLES: tuple[Role, ...] = get_args(Role)
#: What each role may do, as a rank: a role satisfies any requirement at or below its own.
#: viewer reads; operator also acts (redrive, cancel, refund: issue 17).
ROLE_RANK: dict[Role, int] = {"viewer": 1, "operator": 2}

TOKEN_PREFIX = "ofl_"
TOKEN_BYTES = 32
#: The shape of a token: anything else is refused without a database query.
TOKEN_PATTERN = re.compile(rf"^{TOKEN_PREFIX}[A-Za-z0-9_-]{{43}}$")
#: Names are labels people read in listings and audit entries; never all digits (``revoke`` takes an id or a name).
NAME_PATTERN = re.compile(r"^(?!\d+$)[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$")
#: last_used_at is written at most this often per token, not on every request.
LAST_USED_RESOLUTION = "1 minute"


class TokenError(Exception):
    """A token operation that cannot be done as asked (bad name or role, unknown or duplicate token)."""


class UnknownToken(TokenError):
    """No token has that id or name."""


@dataclass(frozen=True)
class Principal:
    """Who a request authenticated as: a token's id, name and role (the "who" of an audit entry). An OIDC JWT
    (orchestrator/api_oidc.py) has no token id: its subject (``sub``) says who, its name is the person's."""

    token_id: int | None
    name: str
    role: Role
    subject: str | None = None

    def may(self, required: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[required]


def new_token() -> str:
    """A fresh token: the prefix and 32 random bytes, URL-safe base64 without padding (43 characters)."""
    return TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).rstrip(b"=").decode()


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def looks_like_token(value: str) -> bool:
    return bool(TOKEN_PATTERN.match(value))


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise TokenError(
            f"invalid token name {name!r}: up to 64 letters, digits and . _ @ : -, starting with a letter or digit, "
            "not all digits"
        )
    return name


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise TokenError(f"invalid role {role!r}: one of {', '.join(ROLES)}")
    return role  # type: ignore[return-value]


async def create(
    conn: asyncpg.Connection, *, role: str, name: str | None, created_by: str
) -> tuple[str, dict[str, Any]]:
    """Store a new token's hash; returns the token (shown once, never stored) and its row."""
    role = check_role(role)
    name = check_name(name or f"{role}-{secrets.token_hex(3)}")
    token = new_token()
    try:
        row = await conn.fetchrow(
            """INSERT INTO api_token (name, role, token_sha256, created_by) VALUES ($1, $2, $3, $4)
               RETURNING id, name, role, created_at, created_by, revoked_at, last_used_at""",
            name,
            role,
            token_hash(token),
            created_by,
        )
    except asyncpg.UniqueViolationError:
        raise TokenError(f"a token named {name!r} exists already (orderctl token list)") from None
    return token, dict(row)


async def listing(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Every token, revoked ones too, without any secret: id, name, role, who made it and when, last use."""
    rows = await conn.fetch(
        "SELECT id, name, role, created_at, created_by, revoked_at, last_used_at FROM api_token ORDER BY id"
    )
    return [dict(r) for r in rows]


async def revoke(conn: asyncpg.Connection, id_or_name: str) -> tuple[dict[str, Any], bool]:
    """Revoke a token by id or name; returns its row and whether this call revoked it (False: it was already)."""
    column = "id" if id_or_name.isdigit() else "name"
    key: int | str = int(id_or_name) if column == "id" else id_or_name
    row = await conn.fetchrow(
        f"""UPDATE api_token SET revoked_at = coalesce(revoked_at, now()) WHERE {column} = $1
            RETURNING id, name, role, created_at, created_by, revoked_at, last_used_at,
                      revoked_at = now() AS revoked_now""",
        key,
    )
    if row is None:
        raise UnknownToken(f"no token with {column} {id_or_name!r} (orderctl token list)")
    found = dict(row)
    return found, found.pop("revoked_now")


async def authenticate(conn: asyncpg.Connection, token: str) -> Principal | None:
    """The principal a presented token stands for; None if it is malformed, unknown or revoked (one answer for
    all three, so a caller learns nothing about which tokens exist)."""
    if not looks_like_token(token):
        return None
    row = await conn.fetchrow(
        "SELECT id, name, role FROM api_token WHERE token_sha256 = $1 AND revoked_at IS NULL", token_hash(token)
    )
    if row is None:
        return None
    await conn.execute(
        f"""UPDATE api_token SET last_used_at = now()
            WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '{LAST_USED_RESOLUTION}')""",
        row["id"],
    )
    return Principal(token_id=row["id"], name=row["name"], role=row["role"])
