"""Authentication and authorization of the orchestrator's API: ``Authorization: Bearer <token>`` with a role.

Every request to the API app passes ``bearer_auth`` unless its path is public (issue 17: the OpenAPI document
and health). No token, or one that is malformed, unknown or revoked: 401 with ``WWW-Authenticate: Bearer``,
the same answer for all of those, so nobody learns which tokens exist. Then the role: a route's handler may
name the role it needs with ``@requires``; otherwise safe methods (GET, HEAD, OPTIONS) need ``viewer`` and
anything else ``operator``, so a mutating route added later is closed to viewers without anyone remembering
to say so. A viewer that posts gets 403. With OIDC configured (orchestrator/api_oidc.py) a JWT is accepted
beside the opaque tokens: one that fails any check gets the same 401; a valid one whose role claim names no
Orderflow role gets 403 (it is somebody, allowed nothing). Only services in orchestrator/ use this: the domain
services serve no API, so it lives here rather than in plumbing.
"""

from collections.abc import Awaitable, Callable, Collection
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from orchestrator.api_oidc import KeysUnavailable, NoRole, OidcVerifier, looks_like_jwt
from orchestrator.api_tokens import Principal, Role
from orchestrator.problems import problem

#: The authenticated principal of a request (``principal_of``).
PRINCIPAL = web.RequestKey("orderflow_principal", Principal)
#: Looks a presented token up: its principal, or None (malformed, unknown or revoked).
TokenLookup = Callable[[str], Awaitable[Principal | None]]
#: The application's lookup (``with_oidc``), for the console's login to check a token as the API does.
TOKEN_LOOKUP = web.AppKey("orderflow_token_lookup", TokenLookup)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REALM = "orderflow"


def requires(role: Role) -> Callable[[Handler], Handler]:
    """Mark a handler with the role it needs, when the method's default (``role_for_method``) is not it."""

    def mark(handler: Handler) -> Handler:
        handler.required_role = role  # type: ignore[attr-defined]
        return handler

    return mark


def role_for_method(method: str) -> Role:
    """The default: reading needs viewer, anything that may change something needs operator."""
    return "viewer" if method.upper() in SAFE_METHODS else "operator"


def required_role(request: web.Request) -> Role:
    declared = getattr(request.match_info.handler, "required_role", None)
    return declared or role_for_method(request.method)


def principal_of(request: web.Request) -> Principal:
    """Who made an authenticated request (a handler behind ``bearer_auth`` always has one)."""
    return request[PRINCIPAL]


def actor(request: web.Request) -> dict[str, Any]:
    """Who and from where, for an audit entry of a mutating call (issue 17): the token's id, name and role (an
    OIDC JWT: no id, the person's name, and its subject), and the peer address (the ingress controller's, when
    one is in front)."""
    principal = principal_of(request)
    return {
        "tokenId": principal.token_id,
        "token": principal.name,
        "role": principal.role,
        "subject": principal.subject,
        "from": request.remote,
    }


def with_oidc(opaque: TokenLookup, oidc: OidcVerifier | None) -> TokenLookup:
    """The lookup of both kinds of token: a JWT goes to ``oidc`` when it is configured, anything else (an
    ``ofl_`` token, or a JWT without OIDC) to ``opaque``, which refuses what is not its own. Raises NoRole, and
    503 when the issuer's keys cannot be fetched."""
    if oidc is None:
        return opaque

    async def lookup(token: str) -> Principal | None:
        if not looks_like_jwt(token):
            return await opaque(token)
        try:
            return await oidc.authenticate(token)
        except KeysUnavailable:
            raise web.HTTPServiceUnavailable(
                text="the identity provider's keys cannot be fetched", headers={"Retry-After": "5"}
            ) from None

    return lookup


def no_role(exc: NoRole) -> web.Response:
    return problem(
        403,
        f"the identity {exc.subject!r} is authenticated but has no Orderflow role: its issuer's role claim names "
        "neither a viewer nor an operator (docs/security.md, OIDC)",
    )


def unauthorized(error: str | None) -> web.Response:
    challenge = f'Bearer realm="{REALM}"' + (f', error="{error}"' if error else "")
    detail = (
        "this API needs a bearer token: Authorization: Bearer <token> (orderctl token create)"
        if error is None
        else "the bearer token is not valid: it may be mistyped, revoked or from another installation"
    )
    return problem(401, detail, headers={"WWW-Authenticate": challenge})


def bearer_token(request: web.Request) -> str | None:
    """The credentials of an ``Authorization: Bearer`` header (scheme case-insensitive, RFC 9110); None if absent."""
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def session_token(request: web.Request, cookie: tuple[str, str] | None) -> str | None:
    """The console's session cookie (orchestrator/console/session.py), taken only under its path prefix: the JSON
    API stays bearer-only, so a browser's cookie never authenticates a cross-site request to it."""
    if cookie is None:
        return None
    prefix, name = cookie
    if request.path != prefix.rstrip("/") and not request.path.startswith(prefix):
        return None
    return request.cookies.get(name) or None


def bearer_auth(lookup: TokenLookup, *, public: Collection[str] = (), cookie: tuple[str, str] | None = None) -> Any:
    """The middleware: authenticate every request but those to ``public`` paths, then check the role.
    ``cookie`` (path prefix, cookie name): where a session cookie may stand in for the Authorization header."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in public:
            return await handler(request)
        token = bearer_token(request) or session_token(request, cookie)
        if token is None:
            return unauthorized(None)
        try:
            principal = await lookup(token)
        except NoRole as exc:
            return no_role(exc)
        if principal is None:
            return unauthorized("invalid_token")
        request[PRINCIPAL] = principal
        needed = required_role(request)
        if not principal.may(needed):
            return problem(
                403,
                f"this needs the {needed} role; token {principal.name!r} has {principal.role}",
                requiredRole=needed,
            )
        return await handler(request)

    return middleware
