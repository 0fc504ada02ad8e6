"""fer-bench: a comparative benchmark harness for facial expression recognition (FER) methods.

See DESIGN.md (in the project's shared folder) for the architecture; the public entry points are
``fer_bench.registry`` (``register_method`` / ``register_dataset``), ``fer_bench.method.Method`` /
``TorchMethod`` and ``fer_bench.data.load_dataset``.
"""
__version__ = "0.1.0"
