"""Built-in fer-bench methods, one file per paper method.

Installed under the import name ``fer_bench_methods`` (the folder is ``methods/``) so that it cannot
clash with another installed top-level package called ``methods``. Each module registers its
method with ``@register_method`` and is listed under the ``fer_bench.methods`` entry-point group in
setup.cfg, exactly like a third-party plugin.
"""
