"""One admission check for every way in: prompt, sampling ranges, context and KV limits, one text each."""
import pytest

from gyges.engine.admission import Limits, RequestError, admit, check_sampling, context_error
from gyges.engine.sequence import SamplingParams

LIMITS = Limits(vocab_size=100, max_model_len=64, max_kv_tokens=48, kv_limit_reason="the largest instance (TP2)",
                output_estimate=10)


def test_context_error_uses_vllms_wording():
    assert context_error(100, 10, 90, "prompt") is None and context_error(100, 10, None, "prompt") is None
    assert context_error(100, 30, 80, "messages") == (
        "This model's maximum context length is 100 tokens. However, you requested 110 tokens (30 in the messages, "
        "80 in the completion). Please reduce the length of the messages or completion.")
    assert "your request has 100 input tokens" in context_error(100, 100, None, "prompt")


@pytest.mark.parametrize("ids, params, words", [
    ([], SamplingParams(), "the prompt is empty"),
    ([5, 100], SamplingParams(), "token ids must lie in [0, 100)"),
    ([-1], SamplingParams(), "token ids must lie in [0, 100)"),
    (list(range(64)), SamplingParams(max_tokens=1), "maximum context length is 64"),
    (list(range(40)), SamplingParams(max_tokens=30), "maximum context length is 64"),
    (list(range(40)), SamplingParams(max_tokens=9), "needs 49 tokens of KV cache (40 prompt + 9 completion); "
                                                    "the largest instance (TP2) holds 48"),
    ([1], SamplingParams(max_tokens=0), "max_tokens must be at least 1"),
    ([1], SamplingParams(top_k=-1), "top_k"),
])
def test_each_problem_is_refused_with_its_own_text(ids, params, words):
    with pytest.raises(RequestError) as e:
        admit(ids, params, LIMITS)
    assert words in str(e.value)


def test_a_chat_names_its_messages():
    with pytest.raises(RequestError, match="the messages are empty"):
        admit([], SamplingParams(), LIMITS, where="messages")
    with pytest.raises(RequestError, match="in the messages"):
        admit(list(range(40)), SamplingParams(max_tokens=30), LIMITS, where="messages")


def test_admission_never_changes_the_callers_parameters():
    params = SamplingParams(max_tokens=None)
    seq = admit(list(range(10)), params, LIMITS)
    assert params.max_tokens is None
    assert seq.max_tokens == 48 - 10  # as long as the largest instance allows (it is below the context)
    assert seq.need_tokens == 10 + 10 and seq.kv_need == 20  # planned at the output estimate
    given = admit(list(range(10)), SamplingParams(max_tokens=5), LIMITS)
    assert given.max_tokens == 5 and given.need_tokens is None and given.kv_need == 15


@pytest.mark.parametrize("kw, msg", [
    (dict(min_tokens=-1), "min_tokens"), (dict(max_tokens=4, min_tokens=5), "min_tokens \\(5\\) must not exceed"),
    (dict(presence_penalty=2.5), "presence_penalty"), (dict(frequency_penalty=-3), "frequency_penalty"),
    (dict(repetition_penalty=0), "repetition_penalty"), (dict(logprobs=21), "logprobs"),
    (dict(logprobs=-1), "logprobs"), (dict(stop_token_ids=[-1]), "stop_token_ids"), (dict(stop=[""]), "stop"),
    (dict(max_tokens=0), "max_tokens"), (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"),
    (dict(top_k=-1), "top_k")])
def test_sampling_params_reject_bad_values_with_the_field_name(kw, msg):
    with pytest.raises(RequestError, match=msg):
        check_sampling(SamplingParams(**kw))


def test_sampling_params_without_max_tokens_is_allowed():
    check_sampling(SamplingParams(max_tokens=None, min_tokens=100))
