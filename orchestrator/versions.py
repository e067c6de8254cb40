"""Versioned workflow definitions: which definition a saga runs on.

A definition's version is a hash of its content, so the same file deployed twice is one version and any change
is a new one. The orchestrator stores the definition it runs (``deploy``) the first time it starts a saga on
it; each saga records its definition's name and version; a transition of a saga started on another version
uses that version's stored document. So a rolling update that changes the workflow changes it for new sagas
only: those in flight finish by the rules they started under.
"""

import hashlib
import json
from typing import Any

import asyncpg

from orchestrator.definition import Workflow, parse

#: The order saga's name; the only workflow so far.
ORDER_WORKFLOW = "order"


def document_of(workflow: Workflow) -> dict[str, Any]:
    """The definition as stored: the parsed model with the fields its document set (an explicit null, as in
    ``"ResultPath": null``, is kept: it means something else than the field's absence)."""
    return workflow.model_dump(mode="json", exclude_unset=True)


def version_of(workflow: Workflow) -> str:
    """A short hash of the definition's content: equal for equal definitions, new for any change."""
    canonical = json.dumps(document_of(workflow), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class Versions:
    """The definition new sagas start on, and every stored version, parsed once per process."""

    def __init__(self, workflow: Workflow, *, name: str = ORDER_WORKFLOW) -> None:
        self.name = name
        self.current = workflow
        self.version = version_of(workflow)
        self._parsed: dict[str, Workflow] = {self.version: workflow}
        self._deployed = False

    async def deploy(self, conn: asyncpg.Connection) -> None:
        """Store the current definition if it is new; once per process."""
        if self._deployed:
            return
        await conn.execute(
            """INSERT INTO workflow_definition (name, version, document) VALUES ($1, $2, $3::jsonb)
               ON CONFLICT (name, version) DO NOTHING""",
            self.name,
            self.version,
            json.dumps(document_of(self.current)),
        )
        self._deployed = True

    async def workflow(self, conn: asyncpg.Connection, version: str | None) -> Workflow:
        """The definition of ``version`` (None: a saga from before versions were recorded runs on the current)."""
        if version is None:
            return self.current
        found = self._parsed.get(version)
        if found is None:
            document = await conn.fetchval(
                "SELECT document FROM workflow_definition WHERE name = $1 AND version = $2", self.name, version
            )
            if document is None:
                raise LookupError(f"workflow {self.name} version {version} is not stored")
            found = parse(json.loads(document) if isinstance(document, str) else document)
            self._parsed[version] = found
        return found
