"""The contract suite over every registered method (new methods get it for free)."""
import pytest

from fer_bench import checks
from fer_bench.checks import CHECKS, check_method
from fer_bench.registry import METHODS, get_method


@pytest.mark.parametrize("name", METHODS.names())
def test_method_passes_the_contract_suite(name, tmp_path):
    assert check_method(name, workdir=tmp_path) == [c.__name__ for c in CHECKS]


def test_profile_check_names_a_misspelt_dataset_key(tmp_path):
    qcs = get_method("qcs")

    class MisspeltQCS(qcs):
        registered_name = "misspelt_qcs"
        profiles = {**qcs.profiles, "paper": {**qcs.profiles["paper"], "datasets": {"raf-db": {"lr": 3e-6}}}}

    with pytest.raises(AssertionError, match=r"dataset 'raf-db', which is not registered.*Did you mean 'rafdb'"):
        checks.check_profile_tables(MisspeltQCS, {}, None, None, tmp_path)
    checks.check_profile_tables(qcs, {}, None, None, tmp_path)   # the real tables pass


def test_an_undeclared_extra_result_fails_the_contract(tmp_path):
    majority = get_method("majority")

    class Chatty(majority):
        registered_name = "chatty"

        def extra_results(self, out_dir, train, test):
            return {"secret_score": 1.0}

    params = {**Chatty.resolve_params("test"), "device": "cpu"}
    with pytest.raises(AssertionError, match=r"returned 1 undeclared metric\(s\) \(secret_score\)"):
        checks.check_outputs(Chatty, params, checks.toy_dataset(), checks.toy_dataset(n=30, split="test"), tmp_path)
