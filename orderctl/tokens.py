"""``orderctl token create|list|revoke``: the bearer tokens of the orchestrator's API (orchestrator/api_tokens.py).

``create`` prints the new token once, alone on stdout (``TOKEN=$(orderctl token create --role viewer)``);
the orchestrator's database keeps only its SHA-256, so a lost token is revoked and replaced, never shown again.
"""

import argparse
import getpass
import socket
import sys
from typing import Any

from orchestrator import api_tokens
from orderctl import output, reach
from orderctl.config import CtlSettings
from orderctl.errors import NotFound, UsageError
from orderctl.output import Col


def creator() -> str:
    """Who runs orderctl, for the token's created_by: the login name and host (a pod's user may have no name)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


async def cmd_token(settings: CtlSettings, args: argparse.Namespace) -> int:
    conn = await reach.database(settings, "orchestrator")
    try:
        if args.action == "create":
            try:
                token, row = await api_tokens.create(conn, role=args.role, name=args.name, created_by=creator())
            except api_tokens.TokenError as exc:
                raise UsageError(str(exc)) from exc
            return _created(token, row, as_json=args.json)
        if args.action == "list":
            return _list(await api_tokens.listing(conn), as_json=args.json)
        try:
            row, now = await api_tokens.revoke(conn, args.token)
        except api_tokens.UnknownToken as exc:
            raise NotFound(str(exc)) from exc
    finally:
        await conn.close()
    when = "" if now else f" already, at {row['revoked_at'].isoformat()}"
    print(f"token {row['id']} ({row['name']}, {row['role']}) is revoked{when}")
    return 0


def _created(token: str, row: dict[str, Any], *, as_json: bool) -> int:
    if as_json:
        output.as_json({**row, "token": token})
        return 0
    print(token)
    print(
        f"token {row['id']} ({row['name']}, {row['role']}) created: store it now, it is not shown again. "
        f"Use it as: Authorization: Bearer <token>",
        file=sys.stderr,
    )
    return 0


def _list(rows: list[dict[str, Any]], *, as_json: bool) -> int:
    if as_json:
        output.as_json(rows)
        return 0
    columns = [Col("ID", key=True, right=True), Col("NAME", key=True), Col("ROLE"), Col("CREATED"), Col("BY")]
    columns += [Col("LAST USED"), Col("REVOKED")]
    keys = ("id", "name", "role", "created_at", "created_by", "last_used_at", "revoked_at")
    output.table(columns, [[r[k] for k in keys] for r in rows])
    return 0


def add_parser(sub: argparse._SubParsersAction, command: Any, json_flag: Any) -> None:
    """Register ``token`` and its actions (called from orderctl/main.py's parser)."""
    t = command(sub, "token", "bearer tokens of the orchestrator's API: create (shown once), list, revoke")
    t_sub = t.add_subparsers(dest="action", required=True, metavar="ACTION")
    t_create = command(t_sub, "create", "make a token and print it once; only its hash is stored")
    t_create.add_argument(
        "--role", required=True, choices=api_tokens.ROLES, help="viewer reads orders; operator may also act on them"
    )
    t_create.add_argument("--name", help="a label for listings and audit entries (default: <role>-<random>)")
    json_flag(t_create)
    json_flag(command(t_sub, "list", "every token with its role, creator, last use and revocation; no secret"))
    t_revoke = command(t_sub, "revoke", "revoke a token at once: its next request gets 401")
    t_revoke.add_argument("token", help="the token's id or name, as `orderctl token list` shows them")
    t.set_defaults(run=cmd_token)
