"""The command-line flags that configure a cluster (vLLM's names where vLLM has one), shared by
`gyges generate` and `gyges serve`."""
import argparse

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
