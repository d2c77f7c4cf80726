"""`gyges bench`: replay a trace against any OpenAI-compatible server, `vllm bench serve`-style."""
import argparse

from gyges.bench.report import result_json, table, write_json, write_replay
from gyges.bench.runner import BenchConfig, run_benchmark
from gyges.bench.slo import load_baseline, parse_goodput, parse_slo
from gyges.bench.traces import TRACES

EPILOG = """Scaling a trace to a machine: --time-scale multiplies every arrival time (0.1 replays ten
times faster); --length-scale multiplies prompt and output lengths alike (rounded, at least 1 token;
a Mooncake hash id then covers 512 x length-scale tokens, so prefix sharing keeps its shape); a
request still longer than --max-model-len keeps its output length and loses prompt tokens, and the
table counts it as clipped. Prompts are token ids of exactly the scaled length."""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="benchmark an OpenAI-compatible server on a request trace", epilog=EPILOG)
    p.add_argument("--base-url", default=None, help="server URL, e.g. http://127.0.0.1:8000 (default: --host/--port)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--endpoint", default="/v1/completions")
    p.add_argument("--model", default=None, help="model name (default: the first one /v1/models lists)")
    p.add_argument("--trace", default="mooncake-conversation",
                   help=f"a shipped trace ({', '.join(sorted(TRACES))}) or a Mooncake .jsonl / Azure .csv path")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply the trace's arrival times")
    p.add_argument("--length-scale", type=float, default=1.0, help="multiply prompt and output lengths")
    p.add_argument("--max-model-len", type=int, default=None, help="clip requests to this context length")
    p.add_argument("--max-requests", "--num-prompts", dest="max_requests", type=int, default=None,
                   help="send the trace's first N requests")
    p.add_argument("--request-rate", type=float, default=None,
                   help="draw arrivals at this rate (req/s; inf: all at once) instead of the trace's timestamps")
    p.add_argument("--burstiness", type=float, default=1.0,
                   help="gamma shape of the gaps with --request-rate: 1 Poisson, < 1 burstier, > 1 more even")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", "--num-warmups", dest="warmup", type=int, default=0,
                   help="send the first request this many times before the run")
    p.add_argument("--vocab-size", type=int, default=32000, help="prompt token ids stay below this")
    p.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                   help="let the model stop early instead of generating the trace's output length")
    p.add_argument("--goodput", nargs="+", default=[], metavar="KEY:MS", help="e.g. ttft:500 tpot:50 e2el:5000")
    p.add_argument("--slo", nargs="+", default=[], metavar="KEY:Nx",
                   help="length-scaled SLO, e.g. ttft:5x tpot:5x (needs --slo-baseline)")
    p.add_argument("--slo-baseline", default=None,
                   help="JSON of unloaded TTFT/TPOT lines, or the --result-file of an unloaded gyges bench run")
    p.add_argument("--metric-percentiles", default="90,99", help="comma-separated, e.g. 50,90,99")
    p.add_argument("--result-file", default=None, help="write the JSON result with per-request records here")
    p.add_argument("--save-requests", default=None,
                   help="write the requests sent and their send times as a JSONL trace for vllm bench serve")
    p.add_argument("--disable-tqdm", action="store_true")
    p.set_defaults(func=bench)
    return p


def config_from_args(args) -> BenchConfig:
    try:
        percentiles = tuple(float(x) for x in args.metric_percentiles.split(","))
    except ValueError:
        raise ValueError(f"--metric-percentiles {args.metric_percentiles!r}: expected numbers like 90,99") from None
    return BenchConfig(
        base_url=args.base_url or f"http://{args.host}:{args.port}", trace=args.trace, endpoint=args.endpoint,
        model=args.model, time_scale=args.time_scale, length_scale=args.length_scale,
        max_model_len=args.max_model_len, max_requests=args.max_requests, request_rate=args.request_rate,
        burstiness=args.burstiness, max_concurrency=args.max_concurrency, seed=args.seed, warmup=args.warmup,
        vocab_size=args.vocab_size, ignore_eos=args.ignore_eos, goodput_ms=parse_goodput(args.goodput),
        slo=parse_slo(args.slo), slo_baseline=load_baseline(args.slo_baseline) if args.slo_baseline else None,
        percentiles=percentiles, progress=not args.disable_tqdm)


def bench(args) -> int:
    res = run_benchmark(config_from_args(args))
    print(table(res))
    if args.result_file:
        write_json(args.result_file, result_json(res))
    if args.save_requests:
        write_replay(args.save_requests, res)
    return 0
