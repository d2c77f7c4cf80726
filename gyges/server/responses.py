"""OpenAI response bodies built from deltas (pure: data in, JSON-ready dicts out)."""
from gyges.protocol.answers import TokenLogprob


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def completion_logprobs(tokenizer, lps: list[TokenLogprob], text_offset: int) -> dict:
    """The completions API's logprobs: tokens, their logprobs, the top alternatives, text offsets."""
    tokens = [token_text(tokenizer, lp.token_id) for lp in lps]
    offsets = []
    for t in tokens:
        offsets.append(text_offset)
        text_offset += len(t)
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [{token_text(tokenizer, t): v for t, v in lp.top} for lp in lps], "text_offset": offsets}


def chat_logprobs(tokenizer, lps: list[TokenLogprob]) -> dict:
    def entry(token_id: int, logprob: float) -> dict:
        text = token_text(tokenizer, token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
    return {"content": [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}
                        for lp in lps]}


def body(obj: str, rid: str, created: int, model: str, choices: list[dict], usage_: dict | None = None) -> dict:
    """A response or stream chunk of kind `obj` ("text_completion", "chat.completion", ...)."""
    out = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices}
    if usage_ is not None:
        out["usage"] = usage_
    return out
