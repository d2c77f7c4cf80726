"""The step-time fit and the prompt budget a TPOT target leaves, without any model."""
import pytest

from gyges.engine.step_time import MIN_STEPS, StepTimeFit, prefill_budget


def test_the_fit_finds_the_line_of_exact_steps():
    fit = StepTimeFit()
    for i in range(MIN_STEPS):
        fit.observe(10 * i, 0.1 + 0.002 * 10 * i)
    a, b = fit.line()
    assert a == pytest.approx(0.1) and b == pytest.approx(0.002)
    assert fit.tokens_within(0.3) == 100  # (0.3 - 0.1) / 0.002
    assert fit.tokens_within(0.05) == 0   # even a step of no token runs past it


def test_no_fit_before_enough_steps_or_from_steps_of_one_size():
    fit = StepTimeFit()
    for _ in range(MIN_STEPS - 2):
        fit.observe(1, 0.1)
    fit.observe(200, 0.5)
    assert fit.tokens_within(0.3) is None  # one step short
    fit.observe(1, 0.1)
    assert fit.tokens_within(0.3) == 100
    same = StepTimeFit()
    for _ in range(3 * MIN_STEPS):
        same.observe(4, 0.1)
    assert same.line() is None


def test_the_fit_follows_a_machine_that_slows_down():
    fit = StepTimeFit(decay=0.9)
    for i in range(50):
        fit.observe(i % 10 * 20, 0.1 + 0.001 * (i % 10 * 20))
    for i in range(50):
        fit.observe(i % 10 * 20, 0.2 + 0.003 * (i % 10 * 20))
    a, b = fit.line()
    assert a == pytest.approx(0.2, rel=0.05) and b == pytest.approx(0.003, rel=0.05)


def test_prompt_budget_beside_decodes():
    assert prefill_budget(None, 5, 512, 16) == 512   # no target or no fit: the whole budget
    assert prefill_budget(100, 0, 512, 16) == 512    # no decode: no TPOT at stake
    assert prefill_budget(100, 5, 512, 16) == 95     # the step's tokens, decodes included
    assert prefill_budget(100, 95, 512, 16) == 16    # prompts always progress
    assert prefill_budget(600, 5, 300, 16) == 300    # never past what the step has left


def test_a_stretch_of_steps_counts_as_that_many_steps():
    one, stretch = StepTimeFit(), StepTimeFit()
    for fit in (one, stretch):
        fit.observe(300, 0.7)
    for _ in range(12):
        one.observe(8, 0.1)
    stretch.observe(8, 0.1, steps=12)
    assert stretch.n == one.n and stretch.line() == pytest.approx(one.line())
