"""The console's login, logout and the guards of its pages: the session cookie, CSRF and framing.

The session is the API token itself in a cookie: HttpOnly (no script reads it), SameSite=Strict (no other
site's page sends it), Secure when the console is reached over https, Path=/console/ (the JSON API ignores it:
orchestrator/api_auth.py takes the cookie only under this prefix). Every request looks the token up as a bearer
token is, so a revoked token ends its console sessions at once; docs/security.md says why no signed reference.
With OIDC configured the token may be a JWT from the identity provider (pasted as a token is): the session then
ends when the JWT expires, as it would for the API.

CSRF: besides SameSite=Strict, every request under /console/ that may change something (login, logout, redrive)
must carry an Origin header naming this host; browsers send it on every POST.
"""

from html import escape
from urllib.parse import quote, urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from orchestrator.api_auth import SAFE_METHODS, TOKEN_LOOKUP
from orchestrator.api_oidc import NoRole
from orchestrator.console.html import page, see_other
from orchestrator.problems import problem

PREFIX = "/console/"
COOKIE = "orderflow_console"
#: Browsers keep cookies of about 4096 bytes, name and attributes included: a longer JWT would be dropped silently.
COOKIE_LIMIT = 3800
LOGIN_PATH = PREFIX + "login"
LOGOUT_PATH = PREFIX + "logout"
#: The console's own pages get no script, style or frame from elsewhere (its assets are its own files).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class CrossOrigin(Exception):
    """A mutating console request without this host's Origin."""


def same_origin(request: web.Request) -> bool:
    """The request's Origin names the host it was sent to (scheme aside: a TLS-terminating ingress in front)."""
    origin = request.headers.get("Origin", "")
    return bool(origin) and origin != "null" and urlsplit(origin).netloc == request.host


def safe_next(target: str | None) -> str:
    """Where to go after login: a console path only, never another site (``//evil.example`` included)."""
    if target and target.startswith(PREFIX) and not target.startswith("//") and "\\" not in target:
        return target
    return PREFIX


def _secure(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """For /console paths: refuse cross-origin mutations, send a browser without a session to the login page,
    and set the pages' security headers. Other paths pass untouched."""
    if not (request.path + "/").startswith(PREFIX):
        return await handler(request)
    if request.method not in SAFE_METHODS and not same_origin(request):
        return problem(403, "a console form must be posted from the console itself (Origin check)")
    response = await handler(request)
    if response.status == 401 and request.method in SAFE_METHODS:
        # Quoted whole, so the login page reads back the raw path: an order id's %23 stays %23, not a fragment.
        target = quote(str(request.rel_url), safe="/")
        redirect = see_other(f"{LOGIN_PATH}?next={target}")
        redirect.del_cookie(COOKIE, path=PREFIX)
        return redirect
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _login_form(next_path: str, error: str | None = None) -> str:
    message = f'<p class="error" id="login-error">{error}</p>' if error else ""
    return f"""<h1>Orderflow console</h1>{message}
<form method="post" action="{LOGIN_PATH}" class="login">
<input type="hidden" name="next" value="{next_path}">
<label>API token <input type="password" name="token" id="token" autocomplete="off" required
 placeholder="ofl_… or a JWT"></label>
<button type="submit" id="login">Log in</button>
<p class="hint">A token from <code>orderctl token create --role viewer</code> (or operator), or, where OIDC is
configured, an access token from your identity provider.</p>
</form>"""


async def login_page(request: web.Request) -> web.Response:
    return page("Log in", _login_form(escape(safe_next(request.query.get("next")))), status=200)


async def login(request: web.Request) -> web.StreamResponse:
    """Check the token as the API would (an ``ofl_`` token, or a JWT where OIDC is configured); on success keep it
    in the session cookie and go where the user was."""
    form = await request.post()
    token, next_path = str(form.get("token", "")).strip(), safe_next(str(form.get("next", "")))
    if len(token) > COOKIE_LIMIT:
        error = f"That token is longer than a browser keeps in a cookie ({COOKIE_LIMIT} characters)."
        return page("Log in", _login_form(escape(next_path), error), status=400)
    try:
        principal = await request.app[TOKEN_LOOKUP](token)
    except NoRole as exc:
        error = escape(f"{exc}: ask for the viewer or operator role at your identity provider.")
        return page("Log in", _login_form(escape(next_path), error), status=403)
    if principal is None:
        error = "That token is not valid: mistyped, revoked or from another installation."
        return page("Log in", _login_form(escape(next_path), error), status=401)
    found = see_other(next_path)
    found.set_cookie(COOKIE, token, path=PREFIX, httponly=True, samesite="Strict", secure=_secure(request))
    return found


async def logout(request: web.Request) -> web.StreamResponse:
    gone = see_other(LOGIN_PATH)
    gone.del_cookie(COOKIE, path=PREFIX)
    return gone
