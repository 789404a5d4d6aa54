"""What tests need from the machine, asked in one place.

CI must run every test: under CI (``CI=true``) a missing need fails the run with
the reason; elsewhere the test is skipped with it, so a laptop without Mosquitto
or the shared MNIST files can still run the rest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

from fedmq.broker import BrokerError, find_mosquitto
from fedmq.tasks.mnist import REPO_MNIST_DIR, TEST_IMAGES


def unavailable(reason: str) -> NoReturn:
    """Fail under CI, skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI needs it: {reason}", pytrace=False)
    pytest.skip(reason)


def require_mosquitto() -> None:
    try:
        find_mosquitto()
    except BrokerError as exc:
        unavailable(str(exc))


def require_program(name: str) -> str:
    """The path of program ``name`` on PATH."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not on PATH (scripts/setup.sh installs Mosquitto's tools)")
    return path


def require_mnist() -> Path:
    """The shared real MNIST directory (../shared/data/mnist)."""
    if not (REPO_MNIST_DIR / TEST_IMAGES).is_file():
        unavailable(f"real MNIST not present in {REPO_MNIST_DIR}")
    return REPO_MNIST_DIR


WEB_DIR = Path(__file__).resolve().parents[1] / "web"
#: what tests/browser's driver and the JS tests load from web/node_modules (npm ci)
NODE_PACKAGES = ("playwright-core", "mqtt", "@msgpack/msgpack", "uplot", "fzstd")


def require_chromium() -> str:
    """Debian's chromium (scripts/setup.sh installs it from apt): never a downloaded build."""
    from fedmq.web.chromium import ChromiumError, find_chromium

    try:
        return find_chromium()
    except ChromiumError as exc:
        unavailable(str(exc))


def require_node_modules() -> Path:
    """node and web/node_modules from the lockfile (scripts/setup.sh runs `npm ci`)."""
    if shutil.which("node") is None:
        unavailable("node is not on PATH (scripts/setup.sh installs nodejs and npm from apt)")
    modules = WEB_DIR / "node_modules"
    missing = [p for p in NODE_PACKAGES if not (modules / p / "package.json").is_file()]
    if missing:
        unavailable(f"{', '.join(missing)} missing from {modules}: run (cd web && npm ci)")
    return WEB_DIR


def require_cgroups() -> None:
    """Writable cgroup v1 memory and cpu controllers (root), as the build machine has."""
    from fedmq_tools.bench.limits import Cgroup

    try:
        Cgroup(f"fedmq-probe-{os.getpid()}", 64 << 20, 1.0).close()
    except (OSError, RuntimeError) as exc:
        unavailable(f"no writable cgroup v1 memory and cpu controllers: {exc}")
