"""The shipped CPU profile loads, and profiles survive JSON (a free term as null)."""
import json
import math
from dataclasses import replace

import pytest

from gyges.policy.cost_model import CostModel, ModelProfile
from gyges.policy.profiles import CPU_NOMINAL, CPU_PROFILE_PATH, cpu_profile, profile_dict, profile_of
from gyges.sim.fit import errors, sample_of


def test_shipped_profile_reproduces_its_recorded_held_back_error():
    hw = cpu_profile()
    data = json.loads(CPU_PROFILE_PATH.read_text())
    held = [m for m in map(sample_of, data["samples"]) if m.run in data["held_back_runs"]]
    assert "fitted" in hw.name and held
    e, recorded = errors(CostModel(ModelProfile(**data["model_profile"]), hw), held), data["error_held_back"]
    assert e["runs"] == pytest.approx(recorded.pop("runs"))
    assert {k: v for k, v in e.items() if k != "runs"} == pytest.approx(recorded)


def test_free_terms_round_trip_as_null(tmp_path):
    hw = replace(CPU_NOMINAL, link_efficiency=math.inf)
    d = profile_dict(hw)
    assert d["link_efficiency"] is None
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"profile": d}))
    assert cpu_profile(p) == hw == profile_of(d)


def test_missing_profile_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="--fit"):
        cpu_profile(tmp_path / "none.json")
