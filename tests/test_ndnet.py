"""NDNet against Table II of Yang et al. and the registry's knob validation."""

import pytest
import torch

import archsearch
from archsearch import builders
from archsearch.errors import KnobError
from archsearch.measure import count_madds, count_params

# (widths, depths, e, Table II params)
TABLE2 = [
    ("NDNet29", [24, 48, 96], [3, 8, 3], 4, 515_000),
    ("NDNet45", [16, 32, 64], [4, 12, 6], 4, 386_000),
    ("NDNet61", [12, 24, 48], [6, 16, 8], 4, 292_000),
    ("wider NDNet29", [64, 128, 256], [3, 8, 3], 4, 3_505_000),
]


@pytest.mark.parametrize("label,widths,depths,e,paper", TABLE2, ids=[r[0] for r in TABLE2])
def test_parameter_counts_within_5_percent_of_table2(label, widths, depths, e, paper):
    model = archsearch.build("ndnet", num_classes=19, widths=widths, depths=depths, expansion=e)
    assert abs(count_params(model) / paper - 1) < 0.05


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
    model = archsearch.build("ndnet")
    assert model.archsearch_knobs == {"widths": [16, 32, 64], "depths": [4, 12, 6], "expansion": 4}
    assert model.archsearch_builder == "ndnet"


def test_unknown_knob_and_bad_values_are_clear_errors():
    with pytest.raises(KnobError, match="unknown knob.*widths"):
        archsearch.build("ndnet", width=3)
    with pytest.raises(KnobError, match="'widths'.*length 3"):
        archsearch.build("ndnet", widths=[16, 32])
    with pytest.raises(KnobError, match="'expansion'.*\\[1, 8\\]"):
        archsearch.build("ndnet", expansion=0)
    with pytest.raises(KnobError, match="unknown builder"):
        archsearch.build("nope")


def test_every_builder_documents_its_knobs_with_paper_names():
    for name in builders.names():
        entry = builders.get(name)
        for f in entry.knob_fields():
            assert f.metadata.get("paper") and f.metadata.get("doc"), f"{name}.{f.name} lacks paper/doc"
        entry.resolve({})  # the paper defaults are valid
