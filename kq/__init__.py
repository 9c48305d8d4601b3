"""The ``kq`` command line: the one module allowed to import all three layers.

Each area registers its commands from its own module (``kq/data.py``, ``kq/features.py``, ...):
thin wrappers that parse, call the library and print. Heavy imports happen inside the commands so
``kq --help`` stays fast.
"""
