"""The browser modules' JavaScript unit tests (web/test/browser, node's test runner),
run from pytest so that CI's one suite includes them."""

from __future__ import annotations

import subprocess

from tests.needs import require_node_modules


def test_the_browser_modules_pass_their_node_tests() -> None:
    web = require_node_modules()
    run = subprocess.run(["node", "--test", "test/browser/"], check=False, cwd=web,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "# fail 0" in run.stdout and "# pass 0" not in run.stdout
