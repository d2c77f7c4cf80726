import pytest

from gyges.engine.detokenizer import IncrementalDetokenizer, held_back

TEXT = "Hello 🙂 世界, café! Ünïcödé → ✓ and 日本語のテキスト 🎉🎉 done."


def stream(detok, ids):
    chunks = [detok.add([t]) for t in ids]
    return chunks + [detok.finish()]


def test_token_by_token_text_equals_full_decode_and_no_broken_characters(smol_tokenizer):
    tok = smol_tokenizer
    prompt = tok.encode("Say something:", add_special_tokens=False)
    ids = tok.encode(TEXT, add_special_tokens=False)
    assert any("\ufffd" in tok.decode([t]) for t in ids)  # the text really splits characters across tokens
    chunks = stream(IncrementalDetokenizer(tok, prompt), ids)
    assert "".join(chunks) == tok.decode(ids) == TEXT
    assert not any("\ufffd" in c for c in chunks)


def test_each_token_decodes_a_short_window_not_the_whole_output(smol_tokenizer):
    lengths = []

    class Spy:
        all_special_ids = smol_tokenizer.all_special_ids
        convert_ids_to_tokens = staticmethod(smol_tokenizer.convert_ids_to_tokens)

        @staticmethod
        def convert_tokens_to_string(tokens):
            lengths.append(len(tokens))
            return smol_tokenizer.convert_tokens_to_string(tokens)

    ids = smol_tokenizer.encode(" word" * 300, add_special_tokens=False)
    assert "".join(stream(IncrementalDetokenizer(Spy, [1, 2, 3]), ids)) == " word" * 300
    assert max(lengths) <= 4


def test_special_tokens_are_skipped(smol_tokenizer):
    tok = smol_tokenizer
    ids = tok.encode("a b", add_special_tokens=False)
    out = "".join(stream(IncrementalDetokenizer(tok, []), [ids[0], tok.eos_token_id, *ids[1:]]))
    assert out == "a b"


def test_stop_string_across_tokens_cuts_the_text_and_is_never_sent_in_part(smol_tokenizer):
    tok = smol_tokenizer
    ids = tok.encode("The answer is forty-two. END of story", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [], stop=["forty-two.", "never"])
    chunks = stream(detok, ids)
    assert "".join(chunks) == "The answer is " and detok.stopped
    assert all("forty" not in c and "fort" not in c for c in chunks)
    assert detok.add(ids[:2]) == ""
    assert tok.decode(ids[:detok.used]).endswith("forty-two.")  # the token that completed it, none after
    assert not tok.decode(ids[:detok.used - 1]).endswith("forty-two.")


def test_tokens_after_a_stop_in_the_same_batch_are_not_taken(smol_tokenizer):
    tok = smol_tokenizer
    ids = tok.encode("one two three four five", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [], stop=["two"])
    assert detok.add(ids) == "one " and detok.stopped
    assert detok.used == len(tok.encode("one two", add_special_tokens=False)) < len(ids)


def test_text_that_might_become_a_stop_string_is_held_then_released(smol_tokenizer):
    tok = smol_tokenizer
    detok = IncrementalDetokenizer(tok, [], stop=["STOPX"])
    ids = tok.encode("go STOP now", add_special_tokens=False)
    chunks = stream(detok, ids)
    assert "".join(chunks) == "go STOP now" and not detok.stopped
    sent = ""
    for c in chunks[:-1]:
        sent += c
        assert not sent.endswith(("S", "ST", "STO", "STOP"))


def test_the_earliest_of_several_stop_strings_wins(smol_tokenizer):
    tok = smol_tokenizer
    detok = IncrementalDetokenizer(tok, [], stop=["cd", "b"])
    assert "".join(stream(detok, tok.encode("a b c d", add_special_tokens=False))) == "a "


def test_finish_releases_an_incomplete_character_as_the_full_decode_does(smol_tokenizer):
    tok = smol_tokenizer
    ids = tok.encode("世界", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [])
    partial = [detok.add([t]) for t in ids[:-1]]
    assert "".join(partial) + detok.finish() == tok.decode(ids[:-1])


@pytest.mark.parametrize("text, stops, n", [("abc", ["cde"], 1), ("abcd", ["cde", "bcdx"], 3), ("abc", ["x"], 0),
                                             ("abc", ["abc"], 0), ("", ["a"], 0), ("aa", ["aab"], 2)])
def test_held_back_is_the_longest_suffix_that_is_a_proper_stop_prefix(text, stops, n):
    assert held_back(text, stops) == n


def test_a_stop_string_in_a_special_token_matches_only_when_special_tokens_are_kept(smol_tokenizer):
    tok = smol_tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ids = [*tok.encode("a b", add_special_tokens=False), end, *tok.encode(" c", add_special_tokens=False)]
    kept = IncrementalDetokenizer(tok, [], stop=["<|im_end|>"], skip_special_tokens=False)
    assert "".join(stream(kept, ids)) == "a b" and kept.stopped and kept.used == 3
    skipped = IncrementalDetokenizer(tok, [], stop=["<|im_end|>"])
    assert "".join(stream(skipped, ids)) == "a b c" and not skipped.stopped
