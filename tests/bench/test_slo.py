import json

import pytest

from gyges.bench.slo import (Baseline, Line, attainment, fit_baseline, fit_line, load_baseline, meets_slo,
                             parse_goodput, parse_slo)

BASE = Baseline(ttft=Line(0.1, 0.001), tpot=Line(0.02))  # TTFT 0.1 s + 1 ms per prompt token; TPOT 20 ms


def test_parse_goodput_and_slo():
    assert parse_goodput(["ttft:500", "tpot:50", "e2el:2000.5"]) == {"ttft": 500.0, "tpot": 50.0, "e2el": 2000.5}
    assert parse_slo(["ttft:5x", "tpot:2.5x"]) == {"ttft": 5.0, "tpot": 2.5}
    for bad in (["ttft"], ["foo:1"], ["ttft:fast"], ["ttft:-1"]):
        with pytest.raises(ValueError):
            parse_goodput(bad)
    for bad in (["ttft:5"], ["e2el:5x"], ["ttft:0x"], ["ttft:x"], ["tpot"]):
        with pytest.raises(ValueError):
            parse_slo(bad)


def test_fit_line_exact_and_constant():
    line = fit_line([100, 200, 400], [0.2, 0.3, 0.5])
    assert (line.a, line.b) == pytest.approx((0.1, 0.001))
    assert fit_line([5, 5], [1.0, 3.0]) == Line(2.0)
    with pytest.raises(ValueError):
        fit_line([1], [])


def test_length_scaled_slo():
    slo = {"ttft": 5.0, "tpot": 5.0}
    # prompt 1000: unloaded TTFT 1.1 s, limit 5.5 s; TPOT limit 0.1 s
    assert meets_slo(1000, 5.5, 0.1, slo, BASE)
    assert not meets_slo(1000, 5.6, 0.05, slo, BASE)
    assert meets_slo(100, 0.99, None, slo, BASE)  # one output token: no TPOT
    assert not meets_slo(100, 1.01, 0.01, slo, BASE)  # limit 5 * 0.2 = 1.0 s for a short prompt
    assert not meets_slo(100, 0.5, 0.11, slo, BASE)
    assert not meets_slo(100, None, None, slo, BASE)  # failed or rejected
    assert meets_slo(100, 0.5, 9.0, {"ttft": 5.0}, BASE)
    assert attainment([(1000, 5.5, 0.1), (100, 1.01, 0.01), (10, None, None), (10, 0.1, 0.02)], slo, BASE) == 0.5
    with pytest.raises(ValueError):
        attainment([], slo, BASE)


def test_baseline_from_json_or_unloaded_result(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps(BASE.to_json()))
    assert load_baseline(tmp_path / "b.json") == BASE
    reqs = [dict(prompt_len=p, send_s=1.0, first_token_s=1.0 + 0.1 + 0.001 * p, finish_s=1.1 + 0.001 * p + 0.02 * 9,
                 output_tokens=10, error="") for p in (100, 300)]
    reqs.append(dict(prompt_len=50, send_s=0.0, first_token_s=None, finish_s=0.1, output_tokens=0, error="boom"))
    (tmp_path / "r.json").write_text(json.dumps({"requests": reqs}))
    b = load_baseline(tmp_path / "r.json")
    assert (b.ttft.a, b.ttft.b, b.tpot.a, b.tpot.b) == pytest.approx((0.1, 0.001, 0.02, 0.0), abs=1e-9)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="neither"):
        load_baseline(tmp_path / "x.json")
    with pytest.raises(ValueError, match="TPOT"):
        fit_baseline([1], [0.1], [None])


def test_a_miss_is_counted_only_once_it_is_certain():
    from gyges.bench.slo import missed_already
    b, slo = Baseline(Line(0.1, 0.001), Line(0.01)), {"ttft": 2.0, "tpot": 2.0}  # TTFT limit 0.4 s at 100 tokens
    assert not missed_already(100, 0.3, None, False, slo, b)       # still waiting, within the limit
    assert missed_already(100, 0.5, None, False, slo, b)           # waited past it
    assert missed_already(100, 9.0, 0.5, False, slo, b)            # its first token came late
    assert not missed_already(100, 9.0, 0.3, False, slo, b)        # on time; a TPOT miss is not certain yet
    assert missed_already(100, 0.0, None, True, slo, b)            # failed or rejected
    assert not missed_already(100, 9.0, None, False, {"tpot": 2.0}, b)
