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


def require_cgroups() -> None:
    """Writable cgroup v1 memory and cpu controllers (root), as the build machine has."""
    from fedmq_tools.bench.limits import Cgroup

    try:
        Cgroup(f"fedmq-probe-{os.getpid()}", 64 << 20, 1.0).close()
    except (OSError, RuntimeError) as exc:
        unavailable(f"no writable cgroup v1 memory and cpu controllers: {exc}")
