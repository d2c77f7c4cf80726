"""`gyges`: the command line. `generate` runs prompts through a cluster and prints the text; `serve`,
`bench` and `simulate` live with what they drive. Flags follow vLLM's."""
import argparse
import sys

from gyges.cluster.args import add_cluster_args, cluster_config


def generate(args) -> int:
    from gyges.cluster.cluster import Cluster
    from gyges.engine.sequence import SamplingParams
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed, stop=args.stop or [])
    with Cluster(cluster_config(args)) as cluster:
        prompts = [cluster.tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                         tokenize=False)
                   if args.chat and cluster.tokenizer.chat_template else p for p in args.prompt]
        outputs = cluster.generate(prompts, params, progress=len(prompts) > 1)
    for prompt, out in zip(args.prompt, outputs):
        if len(outputs) > 1:
            print(f"### {prompt}")
        print(out.text if out.error is None else f"error: {out.error}")
    return 0 if all(o.error is None for o in outputs) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gyges", description="LLM serving with live tensor-parallel transformation")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text for one or more prompts")
    add_cluster_args(g)
    g.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for a batch")
    g.add_argument("--max-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", help="a stop string; repeat for more")
    g.add_argument("--no-chat", dest="chat", action="store_false",
                   help="send the prompt as raw text instead of through the model's chat template")
    g.set_defaults(func=generate)
    # each further subcommand's module adds its parser and sets `func` (one line each below)
    from gyges.bench.cli import add_parser as add_bench; add_bench(sub)
    from gyges.server.cli import add_parser as add_serve; add_serve(sub)
    from gyges.sim.cli import add_parser as add_simulate; add_simulate(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"gyges: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
