"""The one check a request passes before it is queued, with one error text per problem, for every
way in (the HTTP server, the serving cluster, the offline `Cluster`): the prompt, its sampling
parameters, and whether the model's context and the largest instance the policy can form hold it.
The caller's parameters are never changed: what admission decides (the output limit, the KV need to
plan for) goes into the `Sequence` it returns."""
from dataclasses import dataclass

from gyges.engine.sequence import MAX_LOGPROBS, SamplingParams, Sequence


class RequestError(ValueError):
    """The request cannot be served as asked (HTTP 400)."""


@dataclass(frozen=True)
class Limits:
    vocab_size: int
    max_model_len: int
    max_kv_tokens: int                 # KV tokens of the largest instance a request may have
    kv_limit_reason: str = "the largest instance this cluster can form"
    output_estimate: int = 1024        # output tokens to plan KV for when the client sets no max_tokens


def check_sampling(p: SamplingParams):
    """Raise RequestError naming the first parameter out of its range."""
    checks = [
        (p.max_tokens is None or p.max_tokens >= 1, f"max_tokens must be at least 1, got {p.max_tokens}"),
        (p.temperature >= 0, f"temperature must be >= 0, got {p.temperature}"),
        (0 < p.top_p <= 1, f"top_p must be in (0, 1], got {p.top_p}"),
        (p.top_k >= 0, f"top_k must be >= 0 (0 disables it), got {p.top_k}"),
        (p.min_tokens >= 0, f"min_tokens must be >= 0, got {p.min_tokens}"),
        (p.max_tokens is None or p.min_tokens <= p.max_tokens,
         f"min_tokens ({p.min_tokens}) must not exceed max_tokens ({p.max_tokens})"),
        (-2 <= p.presence_penalty <= 2, f"presence_penalty must be in [-2, 2], got {p.presence_penalty}"),
        (-2 <= p.frequency_penalty <= 2, f"frequency_penalty must be in [-2, 2], got {p.frequency_penalty}"),
        (p.repetition_penalty > 0, f"repetition_penalty must be > 0, got {p.repetition_penalty}"),
        (p.logprobs is None or 0 <= p.logprobs <= MAX_LOGPROBS,
         f"logprobs must be in [0, {MAX_LOGPROBS}], got {p.logprobs}"),
        (all(t >= 0 for t in p.stop_token_ids), f"stop_token_ids must be token ids (>= 0), got {p.stop_token_ids}"),
        (all(p.stop), "stop strings must not be empty"),
    ]
    for ok, message in checks:
        if not ok:
            raise RequestError(message)


def context_error(max_model_len: int, prompt_len: int, max_tokens: int | None, where: str = "prompt") -> str | None:
    """vLLM's message when a prompt (plus max_tokens) exceeds the model's context; None if it fits."""
    if prompt_len >= max_model_len:
        return (f"This model's maximum context length is {max_model_len} tokens. However, your request has "
                f"{prompt_len} input tokens. Please reduce the length of the input {where}.")
    if max_tokens is not None and prompt_len + max_tokens > max_model_len:
        return (f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the {where}, {max_tokens} in the completion). "
                f"Please reduce the length of the {where} or completion.")
    return None


def admit(prompt_ids: list[int], params: SamplingParams, limits: Limits, where: str = "prompt") -> Sequence:
    """The request as the scheduler takes it, or RequestError saying what is wrong. `where` names the
    prompt in messages ("prompt", or "messages" for a chat)."""
    n = len(prompt_ids)
    if n == 0:
        raise RequestError(f"the {where} {'are' if where == 'messages' else 'is'} empty")
    check_sampling(params)
    if min(prompt_ids) < 0 or max(prompt_ids) >= limits.vocab_size:
        raise RequestError(f"{where} token ids must lie in [0, {limits.vocab_size})")
    msg = context_error(limits.max_model_len, n, params.max_tokens, where)
    if msg:
        raise RequestError(msg)
    given = params.max_tokens is not None
    least = n + (params.max_tokens if given else 1)
    if least > limits.max_kv_tokens:
        raise RequestError(f"the request needs {least} tokens of KV cache ({n} prompt + "
                           f"{params.max_tokens if given else 1} completion); {limits.kv_limit_reason} holds "
                           f"{limits.max_kv_tokens}")
    # no max_tokens: as long as the context and the largest instance allow, planned at the estimate
    max_tokens = params.max_tokens if given else min(limits.max_model_len, limits.max_kv_tokens) - n
    seq = Sequence(list(prompt_ids), params, max_tokens=max_tokens)
    if not given:
        seq.need_tokens = n + min(limits.output_estimate, max_tokens)
    return seq
