"""Benchmarks: figures anyone can rerun, each written with its command and machine.

``w1`` (Workload W1 over a real broker vs the in-process reference), ``ingest``
(coordinator updates per second), ``scale`` (the largest fleet that keeps its
deadlines, via ``fleet``/``fedmq swarm``) and ``footprint`` (agent memory,
import time, install size). ``cli`` registers the commands; ``measure`` and
``results`` hold what they share. Importing the package imports none of them.
"""
