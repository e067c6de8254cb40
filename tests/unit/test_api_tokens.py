"""API tokens: their shape (recognisable by secret scanners), their hash, names and roles."""

import hashlib

import pytest
from pydantic import ValidationError

from orchestrator.api_tokens import (
    TOKEN_PREFIX,
    Principal,
    TokenError,
    check_name,
    check_role,
    looks_like_token,
    new_token,
    token_hash,
)
from orchestrator.main import OrchestratorSettings


def test_a_token_is_the_prefix_and_32_random_bytes() -> None:
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert token.startswith(TOKEN_PREFIX) and len(token) == len(TOKEN_PREFIX) + 43
        assert looks_like_token(token)


def test_only_the_sha256_is_kept() -> None:
    token = new_token()
    assert token_hash(token) == hashlib.sha256(token.encode()).digest() and len(token_hash(token)) == 32


@pytest.mark.parametrize(
    "value", ["", "ofl_", "ofl_short", "Bearer ofl_" + "a" * 43, "xyz_" + "a" * 43, "ofl_" + "a" * 44]
)
def test_anything_else_is_not_a_token(value: str) -> None:
    assert not looks_like_token(value)


def test_operator_may_do_what_viewer_may_and_more() -> None:
    viewer, operator = Principal(1, "v", "viewer"), Principal(2, "o", "operator")
    assert viewer.may("viewer") and not viewer.may("operator")
    assert operator.may("viewer") and operator.may("operator")


@pytest.mark.parametrize("name", ["ci", "grafana-reader", "ada@example.com", "svc:console", "v1.2"])
def test_names_people_read(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "42", "-x", "a b", "x" * 65, "é"])
def test_names_that_would_confuse_revoke_or_a_listing(name: str) -> None:
    with pytest.raises(TokenError):
        check_name(name)


def test_roles_are_viewer_and_operator() -> None:
    assert check_role("operator") == "operator"
    with pytest.raises(TokenError):
        check_role("admin")


def test_the_api_never_shares_the_open_port() -> None:
    with pytest.raises(ValidationError, match="a port of its own"):
        OrchestratorSettings(http_port=8000, api_port=8000)
