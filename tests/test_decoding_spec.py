"""The typed decoding settings: `spec.gamma=auto` resolved once, the summary's `spec` as before, one-line errors."""

import pytest
from conftest import compose_app_cfg
from omegaconf import OmegaConf

from specfair.decoding.spec import DecodingSpec, pairing_view
from specfair.errors import SpecfairError


def shipped_spec(*overrides) -> dict:
    return OmegaConf.to_container(compose_app_cfg(*overrides).spec, resolve=True)


def test_the_shipped_settings_record_as_the_config_reads():
    raw = shipped_spec()
    spec = DecodingSpec.from_config(raw)
    expected = {k: v for k, v in raw.items() if k != "gamma_max"}
    assert spec.record("decode") == expected
    assert spec.record("replay") == {k: v for k, v in expected.items() if k != "compile"}
    assert not spec.auto and spec.gamma_option == "spec.gamma"


def test_auto_takes_gamma_max_as_its_cap():
    spec = DecodingSpec.from_config(shipped_spec("spec.gamma=auto", "spec.gamma_max=6"))
    assert (spec.gamma, spec.auto, spec.gamma_option) == (6, True, "spec.gamma_max")
    assert spec.record()["gamma"] == 6 and spec.record()["gamma_auto"] is True


def test_pairing_ignores_speed_only_settings_and_unset_ones():
    a = DecodingSpec.from_config(shipped_spec("spec.batch_size=4")).record("replay")
    b = DecodingSpec.from_config(shipped_spec("spec.batch_size=32")).record("decode")
    assert pairing_view(a) == pairing_view(b)
    assert pairing_view({**a, "gamma": 2}) != pairing_view(b)
    assert "top_k" not in pairing_view(a)  # null: equal to a run that never recorded it


@pytest.mark.parametrize(
    "values, message",
    [
        ({"gamma": 0}, "spec.gamma=0: must be >= 1"),
        ({"gamma": "auto", "gamma_max": 0}, "spec.gamma=auto needs spec.gamma_max >= 1"),
        ({"temperature": -1.0}, "spec.temperature=-1.0"),
        ({"top_p": 0}, "spec.top_p=0"),
        ({"confidence_threshold": 1.0}, "spec.confidence_threshold=1.0"),
        ({"batch_size": 0}, "spec.batch_size=0"),
        ({"gama": 3}, "spec.gama: no such option"),
    ],
)
def test_bad_settings_are_refused_in_one_line(values, message):
    with pytest.raises(SpecfairError, match=message.replace("(", r"\(").replace(".", r"\.")):
        DecodingSpec.from_config({"gamma": 4, "max_new_tokens": 8, **values})
