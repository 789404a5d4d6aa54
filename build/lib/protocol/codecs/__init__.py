"""The update codec stages behind :mod:`protocol.compress` (the public entry point).

spec.py (the spec grammar), indices.py (top-k index coding), quantise.py (value
quantisers), entropy.py (zstd). See docs/CODECS.md.
"""
