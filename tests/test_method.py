import numpy as np
import pytest

from fer_bench.method import Method, NotFittedError, Param, ParameterError, parse_overrides
from fer_bench.registry import get_method


def test_bad_value_is_one_sentence_naming_parameter_and_range():
    cls = get_method("baseline")
    with pytest.raises(ParameterError) as err:
        cls(lr=-1)
    assert str(err.value) == "The 'lr' parameter of baseline must be a float in (0, inf). Got -1 instead."


def test_choices_and_unknown_parameter():
    cls = get_method("baseline")
    with pytest.raises(ParameterError, match="one of 'adam', 'adamw', 'sgd', 'sam'"):
        cls(optimizer="rmsprop")
    with pytest.raises(ParameterError, match="has no parameter 'learning_rate'; allowed: .*lr"):
        cls(learning_rate=0.1)


def test_constructor_only_stores_and_coerces():
    cls = get_method("baseline")
    m = cls(lr="0.01", epochs="3", amp="false", pretrained="none")
    assert m.lr == 0.01 and m.epochs == 3 and m.amp is False and m.pretrained is None
    assert not hasattr(m, "model_")


def test_profiles_resolve_in_order_defaults_profile_overrides():
    cls = get_method("baseline")
    quick = cls.resolve_params("quick")
    test = cls.resolve_params("test", overrides={"lr": "5e-4"})
    assert quick["epochs"] == cls.profiles["quick"]["epochs"]
    assert test["epochs"] == 1 and test["lr"] == 5e-4
    with pytest.raises(ParameterError, match="Unknown profile 'fast'; allowed: test, quick, paper"):
        cls.resolve_params("fast")


def test_paper_profile_can_differ_per_dataset():
    class PerDataset(Method):
        params = {"alpha": Param(1.0, float)}
        profiles = {"paper": {"alpha": 2.0, "datasets": {"rafdb": {"alpha": 3.0}}}}

    assert PerDataset.resolve_params("paper")["alpha"] == 2.0
    assert PerDataset.resolve_params("paper", "rafdb")["alpha"] == 3.0
    assert PerDataset.resolve_params("paper", "ferplus")["alpha"] == 2.0


def test_a_profile_can_set_values_for_one_initialisation_and_overrides_still_win():
    class PerInit(Method):
        params = {"alpha": Param(1.0, float), "pretrained": Param("faces", str, none_ok=True)}
        profiles = {"quick": {"alpha": 2.0, "inits": {"faces": {"alpha": 3.0}}}}

    assert PerInit.resolve_params("quick")["alpha"] == 3.0                               # the default init
    assert PerInit.resolve_params("quick", overrides={"pretrained": "none"})["alpha"] == 2.0   # scratch: not applied
    assert PerInit.resolve_params("quick", overrides={"alpha": "5"})["alpha"] == 5.0


def test_a_parameter_added_as_id_neutral_keeps_the_ids_of_cells_at_its_default():
    from fer_bench.registry import METHODS, register_method
    from fer_bench.runner import expand_grid

    class Before(Method):
        params = {"alpha": Param(1.0, float)}

    class After(Method):
        params = {"alpha": Param(1.0, float), "beta": Param(None, float, none_ok=True, id_neutral=True)}

    ids = []
    for cls in (Before, After, After):
        register_method("id_probe")(cls)
        try:
            sets = {"id_probe": {"beta": "0.5"}} if len(ids) == 2 else {}
            ids.append(expand_grid(["id_probe"], ["synthetic"], [0], [0.0], "quick", sets, "cpu", None)[0].cell_id)
        finally:
            METHODS.unregister("id_probe")
    assert ids[0] == ids[1] != ids[2]                    # at its default: the old id; set: a new cell


def test_parse_overrides():
    assert parse_overrides(["baseline.lr=1e-3", "*.epochs=2"], ["baseline"]) == {"baseline": {"lr": "1e-3"}, "*": {"epochs": "2"}}
    with pytest.raises(ParameterError, match="method.param=value"):
        parse_overrides(["lr=1e-3"], ["baseline"])
    with pytest.raises(ParameterError, match="not in this run"):
        parse_overrides(["qcs.lr=1"], ["baseline"])


def test_fit_rejects_non_dataset_and_predict_before_fit(toy):
    train, test = toy
    m = get_method("majority")()
    with pytest.raises(NotFittedError, match="call fit"):
        m.predict(test)
    with pytest.raises(TypeError, match="FERDataset"):
        m.fit(train.images)
    m.fit(train)
    with pytest.raises(ValueError, match=r"uint8 images \(N, H, W, 3\)"):
        m.predict(np.zeros((2, 8, 8), dtype=np.uint8))


def test_majority_predicts_most_frequent_training_class(toy):
    train, test = toy
    labels = train.labels.copy()
    labels[:60] = 2
    m = get_method("majority")().fit(train.with_labels(labels, "skew"))
    assert (m.predict(test) == 2).all()
    assert np.allclose(m.predict_proba(test)[0], np.bincount(labels, minlength=3) / len(labels))


def test_every_registered_torch_method_has_the_shared_quick_budget():
    """Equal terms: the quick profile of every torch method trains QUICK_EPOCHS at QUICK_BATCH anchors per step."""
    from fer_bench.method import QUICK_BATCH, QUICK_EPOCHS, TorchMethod
    from fer_bench.registry import METHODS, get_method
    for name in METHODS.names():
        cls = get_method(name)
        if issubclass(cls, TorchMethod):
            params = cls.resolve_params("quick")
            assert (params["epochs"], params["batch_size"]) == (QUICK_EPOCHS, QUICK_BATCH), name
