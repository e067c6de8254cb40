"""PostgreSQL over TLS as the processes connect: sslmode=verify-full with the CA in sslrootcert (or
PGSSLROOTCERT). The right CA and name connect; a wrong CA, or a name the certificate does not carry, is refused
before anything is sent; nothing reaches this cluster without TLS."""

import ssl
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import trustme
from tls_support import PrivatePostgres, ca_file, private_postgres

from plumbing.db import connect, create_pool

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cluster(ca: trustme.CA) -> Iterator[PrivatePostgres]:
    with private_postgres(ca) as running:
        yield running


async def test_verify_full_with_the_right_ca_connects_over_tls(cluster: PrivatePostgres, ca, tmp_path: Path) -> None:
    url = cluster.url(sslmode="verify-full", sslrootcert=ca_file(ca, tmp_path))
    conn = await connect(url)
    try:
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
    finally:
        await conn.close()
    pool = await create_pool(url, size=2)
    try:
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_pgsslrootcert_carries_the_ca_when_the_url_does_not(
    cluster: PrivatePostgres, ca, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The production overlay's way: DB_SSLMODE=verify-full in the URL, the CA path in PGSSLROOTCERT.
    monkeypatch.setenv("PGSSLROOTCERT", ca_file(ca, tmp_path))
    conn = await connect(cluster.url(sslmode="verify-full"))
    await conn.close()


async def test_a_wrong_ca_is_refused(cluster: PrivatePostgres, tmp_path: Path) -> None:
    wrong = ca_file(trustme.CA(), tmp_path, "wrong-ca.crt")
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await connect(cluster.url(sslmode="verify-full", sslrootcert=wrong))


async def test_a_name_the_certificate_does_not_carry_is_refused(cluster: PrivatePostgres, ca, tmp_path: Path) -> None:
    url = cluster.url(host="127.0.0.1", sslmode="verify-full", sslrootcert=ca_file(ca, tmp_path))
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch|Hostname mismatch"):
        await connect(url)


async def test_require_alone_would_accept_any_certificate(cluster: PrivatePostgres) -> None:
    # Why the production mode insists on verify-full: sslmode=require encrypts to whoever answers.
    conn = await connect(cluster.url(sslmode="require"))
    await conn.close()


async def test_without_tls_nothing_connects(cluster: PrivatePostgres) -> None:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await connect(cluster.url(sslmode="disable"))
