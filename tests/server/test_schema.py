import pytest
from pydantic import ValidationError

from gyges.server.schema import ChatCompletionRequest, CompletionRequest


def test_sampling_params_map_openai_fields_and_give_each_choice_its_own_seed():
    req = CompletionRequest(prompt="hi", seed=7, top_k=-1, temperature=1e-7, stop="x", min_tokens=2,
                            repetition_penalty=1.2, presence_penalty=0.5, stop_token_ids=[5])
    a, b = req.sampling_params(8, 3, 0), req.sampling_params(8, 3, 1)
    assert (a.seed, b.seed) == (7, 8) and a.top_k == 0 and a.temperature == 0.0 and a.stop == ["x"]
    assert (a.min_tokens, a.repetition_penalty, a.presence_penalty, a.logprobs, a.max_tokens) == (2, 1.2, 0.5, 3, 8)
    assert a.stop_token_ids == [5] and req.sampling_params(None, None, 0).max_tokens is None
    defaults = CompletionRequest(prompt="hi").sampling_params(16, None, 0)
    assert (defaults.temperature, defaults.top_p, defaults.frequency_penalty) == (1.0, 1.0, 0.0)
    assert defaults.skip_special_tokens
    assert not CompletionRequest(prompt="hi", skip_special_tokens=False).sampling_params(8, None, 0).skip_special_tokens


def test_prompt_forms():
    assert CompletionRequest(prompt="a").prompts() == ["a"]
    assert CompletionRequest(prompt=["a", "b"]).prompts() == ["a", "b"]
    assert CompletionRequest(prompt=[1, 2]).prompts() == [[1, 2]]
    assert CompletionRequest(prompt=[[1], [2, 3]]).prompts() == [[1], [2, 3]]


@pytest.mark.parametrize("kw", [dict(temperature=-0.1), dict(top_p=1.5), dict(top_p=0), dict(max_tokens=0),
                                dict(n=0), dict(logprobs=21), dict(presence_penalty=3), dict(stop=[""]),
                                dict(stream_options={"include_usage": True}), dict(echo=True),
                                dict(temperature=float("nan")), dict(prompt=[-1]), dict(repetition_penalty=0)])
def test_completion_request_rejects(kw):
    with pytest.raises(ValidationError):
        CompletionRequest(**{"prompt": "hi", **kw})


def test_chat_request_fields():
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    req = ChatCompletionRequest(messages=msgs, max_tokens=5, max_completion_tokens=7, logprobs=True, top_logprobs=2)
    assert req.max_new_tokens == 7 and req.num_logprobs == 2 and req.messages[0].template_dict()["content"] == "ab"
    assert ChatCompletionRequest(messages=msgs).num_logprobs is None
    for bad in (dict(messages=[]), dict(messages=msgs, top_logprobs=2), dict(messages=[{"role": "x", "content": "a"}])):
        with pytest.raises(ValidationError):
            ChatCompletionRequest(**bad)
