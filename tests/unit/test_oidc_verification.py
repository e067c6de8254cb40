"""OIDC JWTs on the API (orchestrator/api_oidc.py): every check a token must pass, verified with keys this test
makes and serves as an identity provider would (tests/oidc_support.py), and the settings that turn it on."""

import time
from collections.abc import Iterator
from typing import Any

import pytest
from oidc_support import AUDIENCE, FakeIssuer, new_ec, new_rsa
from pydantic import ValidationError

from orchestrator import api_oidc
from orchestrator.api_oidc import KeysUnavailable, NoRole, OidcConfig, OidcVerifier, claim_values, looks_like_jwt
from orchestrator.api_tokens import new_token
from orchestrator.main import OrchestratorSettings
from plumbing import production

pytestmark = pytest.mark.unit


@pytest.fixture
def issuer() -> Iterator[FakeIssuer]:
    with FakeIssuer().serving() as serving:
        yield serving


def verifier(issuer: FakeIssuer, **overrides: Any) -> OidcVerifier:
    return OidcVerifier(OidcConfig(**{"issuer": issuer.url, "audience": AUDIENCE, **overrides}))


def test_a_valid_jwt_is_its_subject_with_its_role(issuer: FakeIssuer) -> None:
    check = verifier(issuer)
    principal = check.verify(issuer.token(orderflow_role="operator", sub="u-42", preferred_username="ada"))
    assert principal is not None
    assert (principal.token_id, principal.name, principal.subject, principal.role) == (None, "ada", "u-42", "operator")
    viewer = check.verify(issuer.token(orderflow_role=["viewer"], sub="u-43", email="bob@example.com"))
    assert viewer is not None and (viewer.name, viewer.role) == ("bob@example.com", "viewer")
    bare = check.verify(issuer.token(orderflow_role="viewer", sub="u-44"))
    assert bare is not None and bare.name == "u-44" == bare.subject
    assert issuer.jwks_fetches == 1, "the key set is fetched once and cached"


def test_an_es256_key_works_too(issuer: FakeIssuer) -> None:
    issuer.keys["ec1"] = new_ec()
    principal = verifier(issuer).verify(issuer.token(kid="ec1", orderflow_role="viewer"))
    assert principal is not None and principal.role == "viewer"


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": 1_000_000},  # expired long ago
        {"nbf": 4_000_000_000},  # not yet valid
        {"iss": "https://other.example"},
        {"aud": "another-client"},
        {"exp": None},
        {"aud": None},
        {"iss": None},
        {"nbf": None},
        {"sub": None},
        {"sub": ""},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_a_jwt_failing_a_claim_check_is_refused(issuer: FakeIssuer, claims: dict[str, Any]) -> None:
    assert verifier(issuer).verify(issuer.token({"orderflow_role": "operator", **claims})) is None


def test_the_leeway_is_small(issuer: FakeIssuer) -> None:
    now = int(time.time())
    check = verifier(issuer, leeway_seconds=30)
    assert check.verify(issuer.token(orderflow_role="viewer", exp=now - 10)) is not None
    assert check.verify(issuer.token(orderflow_role="viewer", exp=now - 60)) is None


def test_nbf_may_be_optional_for_an_issuer_that_sets_none(issuer: FakeIssuer) -> None:
    token = issuer.token(orderflow_role="viewer", nbf=None)
    assert verifier(issuer).verify(token) is None
    assert verifier(issuer, require_nbf=False).verify(token) is not None


def test_a_jwt_signed_by_another_key_is_refused(issuer: FakeIssuer) -> None:
    # Right kid, wrong key: the signature does not verify.
    assert verifier(issuer).verify(issuer.token(orderflow_role="operator", key=new_rsa())) is None


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_alg_none_and_hmac_with_the_public_key_are_refused(issuer: FakeIssuer, alg: str) -> None:
    forged = issuer.forged(alg, {"orderflow_role": "operator"})
    assert looks_like_jwt(forged)
    assert verifier(issuer).verify(forged) is None


def test_a_token_whose_alg_is_not_its_keys_is_refused(issuer: FakeIssuer) -> None:
    # An ES256 signature presented under the RSA key's kid: the RSA key cannot verify it.
    issuer.keys["ec1"] = new_ec()
    token = issuer.token(kid="k1", key=issuer.keys["ec1"], orderflow_role="operator")
    assert verifier(issuer).verify(token) is None


def test_an_unknown_kid_refetches_the_keys_once_then_a_rotated_key_works(issuer: FakeIssuer) -> None:
    check = verifier(issuer, refresh_cooldown_seconds=0)
    assert check.verify(issuer.token(orderflow_role="viewer")) is not None
    assert issuer.jwks_fetches == 1
    issuer.keys = {"k2": new_rsa()}  # the issuer rotates: k1 is gone
    rotated = issuer.token(kid="k2", orderflow_role="viewer")
    assert check.verify(rotated) is not None
    assert issuer.jwks_fetches == 2, "the unknown kid made one refresh"
    assert check.verify(rotated) is not None and issuer.jwks_fetches == 2
    # A key the issuer never had: refused after its refresh.
    assert check.verify(issuer.token(kid="k9", key=new_rsa(), orderflow_role="viewer")) is None


def test_unknown_kids_cannot_flood_the_issuer(issuer: FakeIssuer) -> None:
    check = verifier(issuer)  # the default cooldown
    assert check.verify(issuer.token(orderflow_role="viewer")) is not None
    foreign = new_rsa()
    for n in range(20):
        assert check.verify(issuer.token(kid=f"made-up-{n}", key=foreign, orderflow_role="viewer")) is None
    assert issuer.jwks_fetches == 1


def test_a_valid_jwt_without_a_role_is_no_role(issuer: FakeIssuer) -> None:
    check = verifier(issuer)
    for claims in ({}, {"orderflow_role": "admin"}, {"orderflow_role": 7}, {"orderflow_role": []}):
        with pytest.raises(NoRole) as caught:
            check.verify(issuer.token({"sub": "u-7", **claims}))
        assert caught.value.subject == "u-7"


def test_a_groups_claim_maps_to_roles(issuer: FakeIssuer) -> None:
    check = verifier(
        issuer,
        role_claim="realm_access.roles",
        operator_values=frozenset({"orderflow-ops"}),
        viewer_values=frozenset({"orderflow-support", "staff"}),
    )
    op = check.verify(issuer.token(realm_access={"roles": ["staff", "orderflow-ops"]}))
    assert op is not None and op.role == "operator", "an operator value wins"
    viewer = check.verify(issuer.token(realm_access={"roles": ["staff"]}))
    assert viewer is not None and viewer.role == "viewer"
    with pytest.raises(NoRole):
        check.verify(issuer.token(realm_access={"roles": ["operator"]}))
    assert claim_values({"a": {"b": "x"}}, "a.b") == ["x"] and claim_values({"a": "x"}, "a.b") == []


def test_what_is_not_a_jwt_is_not_tried(issuer: FakeIssuer) -> None:
    check = verifier(issuer)
    for value in (new_token(), "", "a.b", "not a token", "a.b.c.d"):
        assert check.verify(value) is None
    assert issuer.jwks_fetches == 0


def test_an_issuer_that_cannot_be_reached_is_unavailable_not_invalid(issuer: FakeIssuer) -> None:
    token = issuer.token(orderflow_role="viewer")
    gone = OidcVerifier(OidcConfig(issuer="http://127.0.0.1:9", audience=AUDIENCE))
    with pytest.raises(KeysUnavailable):
        gone.verify(token)
    bad_jwks = verifier(issuer, jwks_url="http://127.0.0.1:9/jwks")
    with pytest.raises(KeysUnavailable):
        bad_jwks.verify(token)


def test_a_failed_discovery_is_not_retried_by_every_request(
    issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = verifier(issuer)
    token = issuer.token(orderflow_role="viewer")
    issuer.discovery_down = True
    with pytest.raises(KeysUnavailable):
        check.verify(token)
    issuer.discovery_down = False
    with pytest.raises(KeysUnavailable, match="a moment ago"):
        check.verify(token)
    assert issuer.discovery_requests == 1
    monkeypatch.setattr(api_oidc, "DISCOVERY_RETRY_SECONDS", 0.0)
    assert check.verify(token) is not None and issuer.discovery_requests == 2


def test_discovery_must_name_the_same_issuer(issuer: FakeIssuer) -> None:
    # The discovery document says issuer.url; configured with a trailing slash, the two differ.
    with pytest.raises(KeysUnavailable):
        OidcVerifier(OidcConfig(issuer=issuer.url + "/", audience=AUDIENCE)).verify(issuer.token())


def test_settings_need_an_audience_and_http_urls() -> None:
    assert OrchestratorSettings().oidc() is None
    with pytest.raises(ValidationError, match="OIDC_AUDIENCE"):
        OrchestratorSettings(oidc_issuer="https://idp.example")
    with pytest.raises(ValidationError, match="not an http"):
        OrchestratorSettings(oidc_issuer="idp.example", oidc_audience="a")
    config = OrchestratorSettings(
        oidc_issuer="https://idp.example",
        oidc_audience="orderflow",
        oidc_role_claim="groups",
        oidc_operator_values="ops, sre",
        oidc_viewer_values="support",
    ).oidc()
    assert config is not None and config.operator_values == {"ops", "sre"} and config.viewer_values == {"support"}


def test_production_refuses_an_issuer_without_tls() -> None:
    plain = OrchestratorSettings(oidc_issuer="http://idp.example", oidc_audience="orderflow")
    found = production.problems(production.process_values(plain))
    assert any(p.startswith("OIDC_ISSUER is not https") for p in found), found
    tls = OrchestratorSettings(oidc_issuer="https://idp.example", oidc_audience="orderflow")
    assert not any("OIDC" in p for p in production.problems(production.process_values(tls)))
    jwks = OrchestratorSettings(
        oidc_issuer="https://idp.example", oidc_audience="orderflow", oidc_jwks_url="http://idp.example/keys"
    )
    assert any(p.startswith("OIDC_JWKS_URL") for p in production.problems(production.process_values(jwks)))
