"""The browser side served from Python: ``fedmq web``, and the demo's pages and browsers.

The pages themselves are ES modules under ``web/src`` (the JavaScript wire protocol,
the browser agent, the dashboard), copied with their vendored libraries into
``fedmq/web/static`` by :mod:`fedmq.web.assets`, so ``pip install fedmq`` needs no node.
"""

from fedmq.web.server import WebConfig, WebServer
from fedmq.web.shard import ShardSource

__all__ = ["ShardSource", "WebConfig", "WebServer"]
