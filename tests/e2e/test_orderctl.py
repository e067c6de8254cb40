"""orderctl as a person uses it: stock, submit, status; and the README's main job, `orderctl demo`. Bad input
(a missing or malformed file, missing fields, a bad option, an unreachable broker or database) ends in one line on
stderr naming the file, field or ORDERFLOW_ variable, and a documented exit code; never a traceback."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest
from harness import Stack, drop_databases, fresh_vhost, orderctl, settings_for

pytestmark = pytest.mark.e2e


def test_stock_submit_and_status(stack: Stack, tmp_path: Path) -> None:
    sku = f"sku-{uuid.uuid4().hex[:8]}-{'long' * 20}"  # ids are never shortened in a table
    shown = orderctl(stack.settings, "stock", "set", sku, "7", "--price", "3.10", "--name", "Tea cup")
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.startswith(sku))
    assert "Tea cup" in row and "3.10" in row and " 7 " in row

    order_id = f"ORDER#{uuid.uuid4().hex[:8]}-{'long' * 20}"
    order = {
        "orderId": order_id,
        "customer": {"email": "ada@example.com", "phone": None},
        "items": [{"productId": sku, "quantity": 2}],
        "paymentMethodId": "pm_card_visa",
    }
    path = tmp_path / "order.json"
    path.write_text(json.dumps(order))
    submitted = orderctl(stack.settings, "submit", str(path), "--wait", "60")
    assert submitted.returncode == 0, submitted.stderr
    assert f"{order_id}: CONFIRMED" in submitted.stdout
    assert f"[1/1] {order_id}: CONFIRMED" in submitted.stderr, "piped, progress is a plain line per order"

    status = orderctl(stack.settings, "status", order_id, "--json")
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert view["status"] == "CONFIRMED" and view["amount"] == 6.2
    assert [s["step"] for s in view["steps"]][-1] == "NotifyCustomer"

    readable = orderctl(stack.settings, "status", order_id)
    assert "CONFIRMED" in readable.stdout and "ProcessPayment" in readable.stdout

    history = orderctl(stack.settings, "history", order_id)
    assert history.returncode == 0, history.stderr
    assert "ExecutionStarted" in history.stdout and "TaskSucceeded" in history.stdout
    assert "ExecutionSucceeded" in history.stdout

    listed = orderctl(stack.settings, "orders", "--limit", "500")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(order_id))
    assert "CONFIRMED" in row and "6.20" in row

    missing = orderctl(stack.settings, "status", "ORDER#nope")
    assert missing.returncode == 1 and "no saga" in missing.stderr

    listings = {
        ("stock", "show", "--json"): lambda doc: any(p["product_id"] == sku and p["price"] == "3.10" for p in doc),
        ("orders", "--limit", "500", "--json"): lambda doc: any(o["order_id"] == order_id for o in doc),
        ("history", order_id, "--json"): lambda doc: doc["history"][-1]["event"] == "ExecutionSucceeded",
        ("outbox", "parked", "--json"): lambda doc: isinstance(doc, list),
        ("dlq", "list", "--json"): lambda doc: "orchestrator.order-requests.dlq" in doc,
        ("dlq", "show", "orchestrator.order-requests", "--json"): lambda doc: isinstance(doc["letters"], list),
    }
    for args, holds in listings.items():
        done = orderctl(stack.settings, *args)
        assert done.returncode == 0, (args, done.stderr)
        assert holds(json.loads(done.stdout)), (args, done.stdout)


async def test_demo_shows_each_order_outcome(servers: None, tmp_path: Path) -> None:
    with fresh_vhost() as amqp_url:  # its own vhost: the session's stack consumes the shared one
        settings = settings_for(amqp_url, tmp=tmp_path)
        await _run_demo(settings, tmp_path)


async def _run_demo(settings, tmp_path: Path) -> None:
    try:
        result = orderctl(settings, "demo", "--timeout", "120", "--no-keep-running", cwd=tmp_path, timeout=300)
        logs = "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((tmp_path / "var/log").glob("*.log")))
        assert result.returncode == 0, result.stdout + result.stderr + logs
        table = result.stdout
        assert table.count("CONFIRMED") >= 2
        assert "CANCELLED" in table and "InsufficientStockError" in table
        assert "PaymentDeclined" in table and "NO OUTCOME" not in table
        # It ends with the console's address, checked against the API with the viewer token it prints.
        ending = table.rstrip().splitlines()[-3:]
        assert ending[0].startswith(f"console: http://127.0.0.1:{settings.orchestrator_api_port}/console/ ")
        assert "it lists this run's 9 of 9 orders" in ending[0], ending
        token = ending[1].removeprefix("viewer token: ")
        assert token.startswith("ofl_")
        tokens = json.loads(orderctl(settings, "token", "list", "--json").stdout)
        assert [t["role"] for t in tokens if t["name"].startswith("demo-")] == ["viewer"]
    finally:
        await drop_databases(settings)


def test_migrate_is_idempotent(amqp_url: str, tmp_path: Path) -> None:
    settings = settings_for(amqp_url, tmp=tmp_path)
    try:
        first = orderctl(settings, "migrate")
        assert first.returncode == 0, first.stderr
        assert "orchestrator/0001_saga" in first.stdout
        second = orderctl(settings, "migrate")
        assert second.returncode == 0 and second.stdout.count("up to date") == 5
    finally:
        asyncio.run(drop_databases(settings))


def closed_port() -> int:
    """A port nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """orderctl with the machine's environment, plus ``env``."""
    command = [sys.executable, "-m", "orderctl", *args]
    return subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60)


ORDER = {
    "orderId": "ORDER#bad-input",
    "customer": {"email": "ada@example.com"},
    "items": [{"productId": "sku-mug", "quantity": 1}],
    "paymentMethodId": "pm_card_visa",
}


def bad_inputs(tmp: Path) -> list[tuple[str, list[str], dict[str, str], int, list[str]]]:
    """(what, arguments, environment, exit code, what the line must name)."""
    malformed, no_fields, good = tmp / "malformed.json", tmp / "no-fields.json", tmp / "good.json"
    malformed.write_text('{"orderId": "ORDER#1",\n')
    no_fields.write_text(json.dumps([ORDER, {"orderId": "ORDER#2", "items": []}]))
    good.write_text(json.dumps(ORDER))
    down = str(closed_port())
    return [
        ("missing file", ["submit", str(tmp / "absent.json")], {}, 2, [str(tmp / "absent.json"), "no such file"]),
        ("malformed JSON", ["submit", str(malformed)], {}, 2, [str(malformed), "not valid JSON", "line 2"]),
        ("missing fields", ["submit", str(no_fields)], {}, 2, [str(no_fields), "order 2", "customer", "items"]),
        ("a price that is no number", ["stock", "set", "sku-mug", "3", "--price", "abc"], {}, 2, ["--price", "abc"]),
        ("a quantity that is no number", ["stock", "set", "sku-mug", "many"], {}, 2, ["quantity", "many"]),
        ("an unknown command", ["frobnicate"], {}, 2, ["frobnicate"]),
        (
            "an unreachable broker",
            ["submit", str(good)],
            {"ORDERFLOW_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{down}/"},
            3,
            ["RabbitMQ", f"127.0.0.1:{down}", "ORDERFLOW_AMQP_URL", "connection refused"],
        ),
        (
            "an unreachable broker for dlq",
            ["dlq", "list"],
            {"ORDERFLOW_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{down}/"},
            3,
            ["ORDERFLOW_AMQP_URL", "connection refused"],
        ),
        (
            "an unreachable database",
            ["stock", "show"],
            {"ORDERFLOW_INVENTORY_DATABASE_URL": f"postgresql://orderflow_inventory@127.0.0.1:{down}/x"},
            3,
            ["PostgreSQL for inventory", f"127.0.0.1:{down}", "ORDERFLOW_INVENTORY_DATABASE_URL", "connection refused"],
        ),
        (
            "a database that does not exist",
            ["status", "ORDER#1"],
            {"ORDERFLOW_ORCHESTRATOR_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/orderflow_absent_db"},
            3,
            ["ORDERFLOW_ORCHESTRATOR_DATABASE_URL", "orderflow_absent_db", "orderctl migrate"],
        ),
        (
            "an unreachable admin database",
            ["migrate"],
            {"ORDERFLOW_ADMIN_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{down}/postgres"},
            3,
            ["ORDERFLOW_ADMIN_DATABASE_URL", "connection refused"],
        ),
        ("a bad setting", ["orders"], {"ORDERFLOW_BASE_HTTP_PORT": "eighty"}, 2, ["ORDERFLOW_BASE_HTTP_PORT"]),
        (
            "a missing workflow file",
            ["redrive", "ORDER#1", "--workflow-file", str(tmp / "absent-workflow.json")],
            {},
            2,
            [str(tmp / "absent-workflow.json"), "--workflow-file"],
        ),
    ]


def test_bad_input_is_one_line_naming_what_to_fix(servers: None, tmp_path: Path) -> None:
    cases = bad_inputs(tmp_path)
    with ThreadPoolExecutor(max_workers=4) as pool:  # each run is a second of imports: overlap them
        runs = list(pool.map(lambda case: run_ctl(*case[1], env=case[2]), cases))
    failures = []
    for (what, _, _, code, named), done in zip(cases, runs, strict=True):
        lines = done.stderr.strip().splitlines()
        if (
            done.returncode != code
            or len(lines) != 1
            or not all(n in lines[0] for n in named)
            or "Traceback" in done.stdout + done.stderr
        ):
            failures.append(f"{what}: exit {done.returncode} (want {code}), stderr {done.stderr!r}")
    assert not failures, "\n".join(failures)


def test_debug_shows_the_traceback(servers: None) -> None:
    down = closed_port()
    done = run_ctl("--debug", "dlq", "list", env={"ORDERFLOW_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{down}/"})
    assert done.returncode == 3 and "Traceback" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("orderctl: cannot reach RabbitMQ")
    after = run_ctl("dlq", "list", "--debug", env={"ORDERFLOW_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{down}/"})
    assert after.returncode == 3 and "Traceback" in after.stderr, "--debug after the command's name works too"


def test_version_help_and_completion(tmp_path: Path) -> None:
    version = run_ctl("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"orderctl {metadata.version('orderflow')}"

    helped = run_ctl("--help")
    assert helped.returncode == 0
    assert all(f"\n  {code}  " in helped.stdout for code in range(5)), "the exit codes are in the help"

    bash = run_ctl("completion", "bash")
    assert bash.returncode == 0 and "complete " in bash.stdout and "orderctl" in bash.stdout
    script = tmp_path / "orderctl.bash"
    script.write_text(bash.stdout)
    # Sourced in bash, it completes the commands and a command's options.
    probe = (
        f"source {script}; COMP_WORDS=(orderctl sta); COMP_CWORD=1; COMP_LINE='orderctl sta'; COMP_POINT=12; "
        '_shtab_orderctl; echo "${COMPREPLY[@]}"; '
        'COMP_WORDS=(orderctl dlq show --); COMP_CWORD=3; _shtab_orderctl; echo "${COMPREPLY[@]}"'
    )
    completed = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert completed.returncode == 0, completed.stderr
    commands, options = completed.stdout.splitlines()
    assert commands.split() == ["status"] and "--json" in options.split() and "--limit" in options.split()

    zsh = run_ctl("completion", "zsh")
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef orderctl")
