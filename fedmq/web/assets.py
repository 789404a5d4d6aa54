"""The committed copy step: the pages' sources and their vendored libraries into the package.

``fedmq web`` serves ``fedmq/web/static``, shipped inside the Python package, so
``pip install fedmq`` needs no node. That directory is generated from ``web/``:
the ES modules under ``web/src`` as they are, and the browser builds of MQTT.js,
@msgpack/msgpack, uPlot and fzstd from ``web/node_modules`` (installed from the lockfile
with ``npm ci``), with their licences. Run ``python -m fedmq.web.assets`` after
changing anything under ``web/src`` and commit the result;
tests/browser/test_static.py fails while the copy differs from its sources.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from fedmq.web.server import STATIC_ROOT

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "web"
#: source folders under web/src copied as they are
SOURCE_DIRS = ("agent", "dashboard", "protocol", "train")
SOURCE_SUFFIXES = (".js", ".html", ".css")
#: (node_modules path, static path): the browser ESM builds and their licences
VENDOR = (
    ("mqtt/dist/mqtt.esm.js", "vendor/mqtt/mqtt.esm.js"),
    ("mqtt/LICENSE.md", "vendor/mqtt/LICENSE.md"),
    ("@msgpack/msgpack/dist.esm", "vendor/msgpack"),
    ("@msgpack/msgpack/LICENSE", "vendor/msgpack/LICENSE"),
    ("uplot/dist/uPlot.esm.js", "vendor/uplot/uPlot.esm.js"),
    ("uplot/dist/uPlot.min.css", "vendor/uplot/uPlot.min.css"),
    ("uplot/LICENSE", "vendor/uplot/LICENSE"),
    ("fzstd/esm/index.mjs", "vendor/fzstd/index.mjs"),
    ("fzstd/LICENSE", "vendor/fzstd/LICENSE"),
)


def planned(web: Path = WEB) -> Iterator[tuple[Path, str]]:
    """Every (source file, path under static/) the copy step writes."""
    for name in SOURCE_DIRS:
        root = web / "src" / name
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in SOURCE_SUFFIXES:
                yield path, f"{name}/{path.relative_to(root).as_posix()}"
    modules = web / "node_modules"
    for source, target in VENDOR:
        where = modules / source
        if where.is_dir():  # an ESM build in several files: the modules only
            for path in sorted(where.rglob("*.mjs")):
                yield path, f"{target}/{path.relative_to(where).as_posix()}"
        else:
            yield where, target


def build(web: Path = WEB, static: Path = STATIC_ROOT) -> list[str]:
    """Replace ``static`` with a fresh copy; returns the paths written.

    Raises:
        FileNotFoundError: when a source is missing (run ``cd web && npm ci`` first).
    """
    plan = list(planned(web))
    missing = [str(src) for src, _ in plan if not src.is_file()]
    if missing:
        raise FileNotFoundError(f"missing {', '.join(missing)} (run: cd web && npm ci)")
    if static.exists():
        shutil.rmtree(static)
    for source, target in plan:
        dest = static / target
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
    return [target for _, target in plan]


if __name__ == "__main__":
    written = build()
    print(f"fedmq web: {len(written)} files in {STATIC_ROOT}", file=sys.stderr)
