import gzip
import lzma

import pytest

from gyges.bench.traces import TRACES, TraceRequest, load_trace

MOONCAKE = ('{"timestamp": 0, "input_length": 700, "output_length": 5, "hash_ids": [0, 1]}\n'
            '{"timestamp": 2500, "input_length": 512, "output_length": 1, "hash_ids": [0]}\n'
            '\n'
            '{"timestamp": 1000, "input_length": 1025, "output_length": 7, "hash_ids": [0, 1, 2]}\n')
AZURE = ("TIMESTAMP,ContextTokens,GeneratedTokens\n"
         "2023-11-16 18:17:03.9799600,4808,10\n"
         "2023-11-16 18:17:04.0319600,3180,8\n"
         "2023-11-16 18:17:05.4799600,12,1\n")


@pytest.mark.parametrize("suffix,opener", [("", open), (".gz", gzip.open), (".xz", lzma.open)])
def test_mooncake_file_any_compression_sorted_by_arrival(tmp_path, suffix, opener):
    path = tmp_path / f"t.jsonl{suffix}"
    with opener(path, "wt") as f:
        f.write(MOONCAKE)
    assert load_trace(path) == [TraceRequest(0.0, 700, 5, (0, 1)), TraceRequest(1.0, 1025, 7, (0, 1, 2)),
                                TraceRequest(2.5, 512, 1, (0,))]


def test_azure_times_relative_to_first_request(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text(AZURE)
    reqs = load_trace(str(path))
    assert [(r.input_len, r.output_len, r.hash_ids) for r in reqs] == [(4808, 10, ()), (3180, 8, ()), (12, 1, ())]
    assert [r.arrival_s for r in reqs] == pytest.approx([0.0, 0.052, 1.5], abs=1e-6)


@pytest.mark.parametrize("name,rows,duration,max_input", [("mooncake-conversation", 12031, 3537.0, 126195),
                                                          ("azure-code", 8819, 3436.0, 7437),
                                                          ("azure-conversation", 19366, 3502.0, 14050)])
def test_shipped_traces_match_their_readme(name, rows, duration, max_input):
    reqs = load_trace(name)
    assert len(reqs) == rows
    assert reqs[0].arrival_s == 0.0 and reqs[-1].arrival_s == pytest.approx(duration, abs=1.0)
    assert max(r.input_len for r in reqs) == max_input
    assert all(r.output_len >= 1 for r in reqs)
    assert (name == "mooncake-conversation") == all(r.hash_ids for r in reqs)


def test_shipped_mooncake_shares_prefixes():
    reqs = load_trace("mooncake-conversation")
    assert reqs[0].hash_ids[0] == reqs[1].hash_ids[0] == 0  # the shared system prompt block
    assert sorted(TRACES) == ["azure-code", "azure-conversation", "mooncake-conversation"]


@pytest.mark.parametrize("name,text,match", [
    ("x.jsonl", '{"timestamp": 0, "input_length": 5}\n', "line 1.*Mooncake"),
    ("x.jsonl", '{"timestamp": 0, "input_length": 1025, "output_length": 1, "hash_ids": [1, 2]}\n', "hash_ids cover"),
    ("x.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 0}\n', "output_length 0 < 1"),
    ("x.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03,5\n", "missing columns.*GeneratedTokens"),
    ("x.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,5,5\n", "line 2"),
    ("x.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n", "empty trace"),
    ("x.txt", "hello\n", "unknown trace format"),
])
def test_bad_traces_name_the_problem(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=match):
        load_trace(tmp_path / name)


def test_unknown_name_lists_shipped_traces():
    with pytest.raises(FileNotFoundError, match="azure-code"):
        load_trace("no-such-trace")
