"""Thread settings of the CPU kernels (batched k-means, neighbour search): native thread pools found once."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def threadpools():
    """threadpoolctl's view of the loaded BLAS and OpenMP libraries, found once (a search costs milliseconds, a
    ``limit`` microseconds)."""
    from threadpoolctl import ThreadpoolController  # a dependency of scikit-learn

    return ThreadpoolController()
