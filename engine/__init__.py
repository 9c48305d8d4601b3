"""krakenquant engine: the shared, pure and deterministic core.

The engine never touches the network, the wall clock or MLflow, and imports neither
``research`` nor ``live_bridge``. Given arrays and a config it returns arrays.
"""

from engine._numba_cache import configure as _configure_numba_cache

__version__ = "0.1.0"

# Compiled kernels are cached per version of the engine's source (see engine/_numba_cache.py):
# numba alone would reuse a kernel compiled against an older version of a kernel it calls.
NUMBA_CACHE = _configure_numba_cache()
