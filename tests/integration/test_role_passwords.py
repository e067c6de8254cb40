"""Any password works for a process's role: `orderctl migrate` gets it as a variable of its own
(ORDERFLOW_<PROCESS>_DATABASE_PASSWORD), percent-encodes it into the role's URL, and creates the role with the
password itself, which the local server (trust auth) stores as a SCRAM verifier we can check."""

import base64
import hashlib
import hmac
import uuid

import asyncpg
import pytest
from harness import ADMIN_DSN

from orderctl.config import CtlSettings
from plumbing.db import drop_database, ensure_database

pytestmark = pytest.mark.integration

NASTY = "p@ss/w:rd%20?#&'\" é"


def scram_matches(verifier: str, password: str) -> bool:
    """Whether PostgreSQL's SCRAM-SHA-256 verifier was made from ``password`` (RFC 5802's StoredKey)."""
    method, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key = keys.split(":")[0]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return method == "SCRAM-SHA-256" and base64.b64encode(hashlib.sha256(client_key).digest()).decode() == stored_key


async def test_a_password_with_any_character_reaches_the_role_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"orderflow_pw_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("ORDERFLOW_ORDERS_DATABASE_URL", f"postgresql://{name}@127.0.0.1:5432/{name}")
    monkeypatch.setenv("ORDERFLOW_ORDERS_DATABASE_PASSWORD", NASTY)
    url = CtlSettings().database_url("orders")
    assert NASTY not in url  # percent-encoded, so the URL still parses
    try:
        await ensure_database(ADMIN_DSN, url)
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await admin.execute("SET password_encryption = 'scram-sha-256'")
            verifier = await admin.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", name)
        finally:
            await admin.close()
        assert verifier is not None and scram_matches(verifier, NASTY)
        role = await asyncpg.connect(url)  # the URL as asyncpg reads it (trust auth here: the parse is what counts)
        try:
            assert await role.fetchval("SELECT current_user") == name
        finally:
            await role.close()
    finally:
        await drop_database(ADMIN_DSN, name)
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        finally:
            await admin.close()
