"""`gyges generate`: run prompts through a cluster and print the text, vLLM-style flags."""
import argparse
import sys

from gyges.cluster.config import ClusterConfig


def add_cluster_args(p: argparse.ArgumentParser):
    p.add_argument("model", nargs="?", default=None,
                   help="HF directory (config.json + safetensors) or .gguf file; default: embedded SmolLM2-135M-Instruct")
    p.add_argument("--devices", type=int, default=1, help="worker processes, one per device")
    p.add_argument("--tp", "--tensor-parallel-size", dest="tp", type=int, default=1, help="TP degree of each instance")
    p.add_argument("--max-tp", type=int, default=None, help="largest TP degree weights are laid out for")
    p.add_argument("--device-memory", default="512MiB", help="memory budget of each device, e.g. 512MiB")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    p.add_argument("--device-type", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--block-size", dest="block_tokens", type=int, default=16, help="tokens per KV block")
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-num-batched-tokens", dest="max_batched_tokens", type=int, default=512,
                   help="token budget of one step; longer prompts are prefilled in chunks of this size")
    p.add_argument("--long-prefill-token-threshold", dest="long_prefill_tokens", type=int, default=0,
                   help="most tokens of one prompt in a step, so a long prompt's prefill leaves room for short "
                        "ones beside it (0: the whole budget)")
    p.add_argument("--target-tpot-ms", dest="target_tpot_ms", type=float, default=0.0,
                   help="keep a step that carries decoding requests within this many ms by taking fewer prompt "
                        "tokens into it, as predicted from the instance's own steps (Sarathi-Serve's stall-free "
                        "batching); 0: off, every step fills the token budget")
    p.add_argument("--threads-per-device", type=int, default=None)
    p.add_argument("--no-cpu-kernels", dest="cpu_kernels", action="store_false",
                   help="bf16 on CPU: use the PyTorch path instead of Gyges' C kernels (packed matmuls, paged decode)")
    p.add_argument("--no-peer-reads", dest="peer_reads", action="store_false",
                   help="CPU: move KV and weights between workers with gloo send/recv instead of reading "
                        "each other's memory (Linux process_vm_readv)")


def cluster_config(args) -> ClusterConfig:
    keys = ("model", "devices", "tp", "max_tp", "device_memory", "dtype", "device_type", "block_tokens",
            "max_num_seqs", "max_batched_tokens", "long_prefill_tokens", "target_tpot_ms", "threads_per_device", "cpu_kernels", "peer_reads")
    return ClusterConfig(**{k: getattr(args, k) for k in keys})


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
