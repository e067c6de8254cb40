"""The container image, run: migrate, the five processes and orderctl from the image built by scripts/build-image.

There is no container engine here, so the image is run the way one would run it with host networking: buildah
mounts a container of the image, and every process is started chrooted into that root filesystem, as the image's
user, with only the image's ENV and the variables the supervisor of ``orderctl up`` sets (a private mount
namespace gives it /dev and /proc and goes away with it). The RabbitMQ vhost and the databases are the test's
own; the development servers (not in the image) run from this checkout. Run by scripts/run-image, which builds
the image and names it in ORDERFLOW_IMAGE.
"""

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Stack, create_databases, drop_databases, eventually, fresh_vhost, order_view, settings_for
from manifests_support import read_dockerfile

from orderctl.config import SERVICES, CtlSettings
from orderctl.sandbox import wait_ready
from orderctl.supervisor import Child, Supervisor, children

pytestmark = pytest.mark.e2e

IMAGE = os.environ.get("ORDERFLOW_IMAGE", "")
USER = "10001:10001"
#: Where this machine's mount and chroot are (the processes get the image's PATH).
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
if not IMAGE:
    pytestmark = [pytestmark, pytest.mark.skip(reason="no image named: scripts/run-image builds and runs it")]
elif not shutil.which("buildah"):
    pytestmark = [pytestmark, pytest.mark.skip(reason="buildah is not installed (apt-get install buildah)")]


def buildah(*args: str) -> str:
    result = subprocess.run(
        ["buildah", "--storage-driver", "vfs", *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"buildah {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


@pytest.fixture(scope="module")
def rootfs() -> Iterator[Path]:
    """The image's root filesystem: a buildah working container, mounted; removed afterwards."""
    container = buildah("from", "--name", f"orderflow-test-{uuid.uuid4().hex[:8]}", IMAGE)
    try:
        yield Path(buildah("mount", container))
    finally:
        with contextlib.suppress(AssertionError):
            buildah("umount", container)
        buildah("rm", container)


def in_image(root: Path, argv: list[str], env: dict[str, str], *, user: str = USER) -> tuple[list[str], dict]:
    """argv and environment that run ``argv`` inside the image: the image's ENV and WORKDIR, its user, the
    host's network. unshare(1) without --fork and chroot(1) exec, so the pid is the process's own and the
    supervisor's SIGTERM reaches it."""
    image = read_dockerfile()
    mount, chroot = (shutil.which(tool, path=HOST_PATH) for tool in ("mount", "chroot"))
    script = (
        f'{mount} --rbind /dev "$0/dev" && {mount} -t proc proc "$0/proc" '
        f'&& exec {chroot} --userspec={user} "$0" /usr/bin/env -C {shlex.quote(image.workdir)} "$@"'
    )
    wrapped = ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, str(root), *argv]
    return wrapped, {**image.env, **env}


def own_env(env: dict[str, str]) -> dict[str, str]:
    """The variables the supervisor sets, without what it inherited from this test's environment."""
    return {k: v for k, v in env.items() if os.environ.get(k) != v}


def ctl_env(settings: CtlSettings) -> dict[str, str]:
    env = {"ORDERFLOW_AMQP_URL": settings.amqp_url, "ORDERFLOW_ADMIN_DATABASE_URL": settings.admin_database_url}
    for spec in SERVICES:
        env[f"ORDERFLOW_{spec.name.upper()}_DATABASE_URL"] = settings.database_url(spec.name)
    env["ORDERFLOW_BASE_HTTP_PORT"] = str(settings.base_http_port)
    return env


def image_entrypoint() -> list[str]:
    return read_dockerfile().entrypoint


def run_in_image(root: Path, args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    argv, full_env = in_image(root, image_entrypoint() + args, env)
    return subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=timeout, check=False)


def inspect(root: Path, script: str, *, user: str = USER) -> str:
    argv, env = in_image(root, ["/bin/sh", "-c", script], {}, user=user)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_image_holds_no_compiler_tests_dev_servers_or_pip(rootfs: Path) -> None:
    assert inspect(rootfs, "id -u; id -g").split() == ["10001", "10001"]
    found = inspect(rootfs, "for c in gcc cc c++ clang make pip pip3; do command -v $c || true; done")
    assert found.strip() == "", f"build tools in the image: {found}"
    site = inspect(rootfs, "python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'").strip()
    for absent in ("tests", "devservers", "bench", "aiosmtpd"):
        assert not (rootfs / site.lstrip("/") / absent).exists(), f"{absent} is in the image's site-packages"
        assert not (rootfs / "app" / absent).exists(), f"{absent} is in the image's /app"
    inspect(rootfs, "python -c 'import orchestrator, services.payment, orderctl.main, plumbing'")


async def test_an_order_is_confirmed_by_the_processes_of_the_image(rootfs: Path, tmp_path: Path) -> None:
    with fresh_vhost("orderflow-image") as amqp_url:
        settings = settings_for(amqp_url, tmp=tmp_path, prefix="of_i")
        ctl = ctl_env(settings)
        try:
            # orderctl migrate from the image (the migrations Job): roles, databases, every migration.
            migrated = await asyncio.to_thread(run_in_image, rootfs, ["migrate"], ctl)
            assert migrated.returncode == 0, migrated.stdout + migrated.stderr
            await create_databases(settings)  # nothing left to do: the image's migrate did it all
            plan: list[Child] = []
            for child in children(settings, dev_servers=True):
                if child.name in {s.name for s in SERVICES}:  # the entrypoint names them as orderctl does
                    child.argv, child.env = in_image(rootfs, [*image_entrypoint(), child.name], own_env(child.env))
                plan.append(child)  # the development servers run from this checkout
            supervisor = Supervisor(plan, log_dir=str(tmp_path / "log"))
            stack = Stack(settings=settings, supervisor=supervisor, log_dir=tmp_path / "log")
            try:
                await supervisor.start()
                await wait_ready(stack, timeout=90)
                await confirm_an_order(rootfs, stack, ctl, tmp_path)
            finally:
                await supervisor.stop()
        finally:
            await drop_databases(settings)


async def confirm_an_order(rootfs: Path, stack: Stack, ctl: dict[str, str], tmp_path: Path) -> None:
    sku = f"sku-image-{uuid.uuid4().hex[:6]}"
    stocked = await asyncio.to_thread(
        run_in_image, rootfs, ["orderctl", "stock", "set", sku, "5", "--price", "4.25"], ctl
    )
    assert stocked.returncode == 0, stocked.stderr
    order_id = f"ORDER#image-{uuid.uuid4().hex[:8]}"
    order = {
        "orderId": order_id,
        "customer": {"email": "ada@example.com", "phone": None},
        "items": [{"productId": sku, "quantity": 2}],
        "paymentMethodId": "pm_card_visa",
    }
    # The order file lives in the image's /tmp (writable by its user, as the emptyDir on /tmp is in a pod).
    inside = f"/tmp/order-{uuid.uuid4().hex[:8]}.json"
    (rootfs / inside.lstrip("/")).write_text(json.dumps(order))
    submitted = await asyncio.to_thread(run_in_image, rootfs, ["orderctl", "submit", inside, "--wait", "90"], ctl)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert f"{order_id}: CONFIRMED" in submitted.stdout

    # A viewer's token from the image's orderctl, as an operator makes one in a pod (docs/operations.md).
    made = await asyncio.to_thread(run_in_image, rootfs, ["orderctl", "token", "create", "--role", "viewer"], ctl)
    assert made.returncode == 0, made.stderr
    stack.api_token = made.stdout.strip()

    async def confirmed() -> bool:
        status, view = await asyncio.to_thread(order_view, stack, order_id)
        return status == 200 and view.get("status") == "CONFIRMED"

    await eventually(confirmed, timeout=30, what=f"{order_id} CONFIRMED at the image's orchestrator")
