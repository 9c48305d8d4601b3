"""krakenquant engine: the shared, pure and deterministic core.

The engine never touches the network, the wall clock or MLflow, and imports neither
``research`` nor ``live_bridge``. Given arrays and a config it returns arrays.
"""

__version__ = "0.1.0"
