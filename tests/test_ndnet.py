"""NDNet against Table II of Yang et al. (the builder's named variants) and the registry's knob validation."""

import pytest
import torch

import archsearch
from archsearch import builders
from archsearch.cost import count_madds, count_params
from archsearch.util.errors import KnobError

# Table II rows that report a parameter count
TABLE2 = [v.qualname for v in builders.variants("ndnet") if "params" in v.paper]


def test_table2_variants_are_declared():
    assert [v.name for v in builders.variants("ndnet")] == [
        "wider_ndnet29",
        "ndnet29",
        "ndnet29_e2",
        "ndnet45",
        "ndnet45_e2",
        "ndnet61",
        "ndnet61_e2",
    ]
    assert TABLE2 == ["ndnet.wider_ndnet29", "ndnet.ndnet29", "ndnet.ndnet45", "ndnet.ndnet61"]
    ndnet45 = builders.variant("ndnet.ndnet45")
    assert dict(ndnet45.knobs) == {"widths": (16, 32, 64), "depths": (4, 12, 6), "expansion": 4}
    assert "Table II" in ndnet45.source and "Titan X" in ndnet45.source


@pytest.mark.parametrize("name", TABLE2)
def test_parameter_counts_within_5_percent_of_table2(name):
    model = archsearch.build(name, num_classes=19)
    assert archsearch.config_of(model).variant == name
    assert abs(count_params(model) / builders.variant(name).paper["params"] - 1) < 0.05


def test_narrower_e2_has_fewer_parameters_and_madds():
    a = archsearch.build("ndnet", expansion=4)
    b = archsearch.build("ndnet", expansion=2)
    assert count_params(b) < count_params(a)
    assert count_madds(b, (1, 3, 64, 128)) < count_madds(a, (1, 3, 64, 128))


def test_fcn32_output_stride_and_train_mode():
    model = archsearch.build("ndnet", num_classes=7).eval()
    out = model(torch.zeros(2, 3, 128, 256))
    assert out.shape == (2, 7, 4, 8)
    model.train()
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 7, 2, 2)


def test_defaults_are_ndnet45_and_recorded_on_the_model():
    config = archsearch.config_of(archsearch.build("ndnet"))
    assert config.knobs.as_dict() == {"widths": [16, 32, 64], "depths": [4, 12, 6], "expansion": 4}
    assert config.builder == "ndnet" and config.num_classes == 19 and config.variant is None
    assert config.knobs == builders.get("ndnet").resolve(builders.variant("ndnet.ndnet45").knob_values())


def test_unknown_knob_and_bad_values_are_clear_errors():
    with pytest.raises(KnobError, match=r"unknown knob.*widths"):
        archsearch.build("ndnet", width=3)
    with pytest.raises(KnobError, match=r"'widths'.*length 3"):
        archsearch.build("ndnet", widths=[16, 32])
    with pytest.raises(KnobError, match=r"'expansion'.*\[1, 8\]"):
        archsearch.build("ndnet", expansion=0)
    with pytest.raises(KnobError, match=r"unknown builder"):
        archsearch.build("nope")


def test_every_builder_documents_its_knobs_with_paper_names():
    for name in builders.names():
        entry = builders.get(name)
        for f in entry.knob_fields():
            assert f.metadata.get("paper") and f.metadata.get("doc"), f"{name}.{f.name} lacks paper/doc"
        entry.resolve({})  # the paper defaults are valid
