"""fedmq's developer tools: benchmarks, simulated fleets, the in-process reference, chaos.

A separate distribution (``tools/pyproject.toml``): ``pip install fedmq[agent]`` never
installs it. The top layer: it may import every fedmq package; none imports it.
"""
