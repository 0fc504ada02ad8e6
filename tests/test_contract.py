"""The contract suite over every registered method (new methods get it for free)."""
import pytest

from fer_bench.checks import CHECKS, check_method
from fer_bench.registry import METHODS


@pytest.mark.parametrize("name", METHODS.names())
def test_method_passes_the_contract_suite(name, tmp_path):
    assert check_method(name, workdir=tmp_path) == [c.__name__ for c in CHECKS]
