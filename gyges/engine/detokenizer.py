"""Incremental detokenization with stop strings (pure: a tokenizer and token ids in, text out).

Each new token decodes only a short window of tokens (vLLM's prefix/read offsets), never the whole
output. A window whose text ends in U+FFFD is an incomplete UTF-8 character (byte-level BPE splits
emoji and CJK across tokens): it waits for the next token. Text that could still become a stop
string is held back, so a partial stop string is never sent. Tokens are taken one at a time, so the
token that completes a stop string is known (`used`): tokens after it are neither sent nor counted.
It runs in the front end (the server's event loop, `Cluster`'s caller), never in the controller's loop.
"""
PROMPT_CONTEXT = 5  # prompt tokens decoded before the output, so the first token's leading space is right


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_ids: list[int], stop: list[str] = (), skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = set(tokenizer.all_special_ids) if skip_special_tokens else set()
        self.stop = list(stop)
        self.tokens: list[str] = tokenizer.convert_ids_to_tokens(list(prompt_ids[-PROMPT_CONTEXT - 2:]))
        self.prefix_offset = max(len(self.tokens) - PROMPT_CONTEXT, 0)
        self.read_offset = len(self.tokens)
        self.text = ""        # decoded output so far (cut at the stop string once one is found)
        self.sent = 0         # characters of `text` handed out
        self.used = 0         # tokens taken, up to and including the one that completed a stop string
        self.stopped = False  # a stop string was found: nothing more will be sent

    def add(self, token_ids: list[int]) -> str:
        """Take new tokens, one at a time until a stop string completes; return the text that is now
        safe to send."""
        out = ""
        for t in token_ids:
            if self.stopped:
                break
            self.used += 1
            if t in self.skip:
                continue
            before = len(self.text)
            self.tokens.append(self.tokenizer.convert_ids_to_tokens(t))
            self.text += self._window(final=False)
            out += self._release(before, final=False)
        return out

    def finish(self) -> str:
        """The output ended: decode what waited for more bytes and release everything held back."""
        if self.stopped:
            return ""
        before = len(self.text)
        self.text += self._window(final=True)
        return self._release(before, final=True)

    def _window(self, final: bool) -> str:
        conv = self.tokenizer.convert_tokens_to_string
        prefix = conv(self.tokens[self.prefix_offset:self.read_offset])
        full = conv(self.tokens[self.prefix_offset:])
        if len(full) <= len(prefix) or (full.endswith("\ufffd") and not final):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
        return full[len(prefix):]

    def _release(self, before: int, final: bool) -> str:
        start = max(0, before - max((len(s) for s in self.stop), default=0) + 1)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[:min(hits)], True
            end = len(self.text)
        else:
            end = len(self.text) if final else len(self.text) - held_back(self.text, self.stop)
        out = self.text[self.sent:max(end, self.sent)]
        self.sent = max(end, self.sent)
        return out


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
