"""``orderctl workflow``: the stored definitions (orchestrator/versions.py), how many sagas run on each, one
definition's JSON, and what changed between two versions."""

import argparse
import difflib
import json
from typing import Any

from orderctl import output, reach
from orderctl.config import CtlSettings
from orderctl.errors import NotFound
from orderctl.output import Col


async def cmd_workflow(settings: CtlSettings, args: argparse.Namespace) -> int:
    conn = await reach.database(settings, "orchestrator")
    try:
        if args.action == "list":
            return _list(await _versions(conn), as_json=args.json)
        if args.action == "show":
            version = args.version or await _newest(conn, args.name)
            print(_pretty(await _document(conn, args.name, version)))
            return 0
        old, new = await _document(conn, args.name, args.v1), await _document(conn, args.name, args.v2)
    finally:
        await conn.close()
    before, after = _pretty(old).splitlines(), _pretty(new).splitlines()
    diff = difflib.unified_diff(before, after, f"{args.name}@{args.v1}", f"{args.name}@{args.v2}", lineterm="")
    print("\n".join(diff))
    return 0


async def _versions(conn: Any) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT d.name, d.version, d.deployed_at,
                  count(s.order_id) AS sagas, count(s.order_id) FILTER (WHERE s.status = 'RUNNING') AS running
           FROM workflow_definition d
           LEFT JOIN saga s ON s.workflow_name = d.name AND s.workflow_version = d.version
           GROUP BY d.name, d.version, d.deployed_at ORDER BY d.name, d.deployed_at DESC"""
    )
    return [dict(r) for r in rows]


def _list(versions: list[dict[str, Any]], *, as_json: bool) -> int:
    if as_json:
        output.as_json(versions)
        return 0
    columns = [Col("NAME", key=True), Col("VERSION", key=True), Col("DEPLOYED"), Col("SAGAS", right=True)]
    columns.append(Col("RUNNING", right=True))
    keys = ("name", "version", "deployed_at", "sagas", "running")
    output.table(columns, [[v[k] for k in keys] for v in versions])
    return 0


async def _newest(conn: Any, name: str) -> str:
    version = await conn.fetchval(
        "SELECT version FROM workflow_definition WHERE name = $1 ORDER BY deployed_at DESC LIMIT 1", name
    )
    if version is None:
        raise NotFound(f"no workflow named {name!r} is stored (orderctl workflow list)")
    return version


async def _document(conn: Any, name: str, version: str) -> Any:
    document = await conn.fetchval(
        "SELECT document FROM workflow_definition WHERE name = $1 AND version = $2", name, version
    )
    if document is None:
        raise NotFound(f"workflow {name!r} has no version {version!r} (orderctl workflow list)")
    return json.loads(document) if isinstance(document, str) else document


def _pretty(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True)
