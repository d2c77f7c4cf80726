"""GPU and model profiles for the simulator: the cost model's inputs at GPU scale.

GPUs: datasheet figures (NVIDIA H100 SXM5, A100 SXM4 80GB and H200 SXM datasheets): HBM bandwidth,
dense BF16 tensor-core FLOP/s (without sparsity), NVLink bandwidth per direction (half the quoted
bidirectional total). Memory is the total nvidia-smi reports, times vLLM's default
gpu_memory_utilization of 0.9 (the rest: CUDA context, activations, graphs). Efficiencies are our
assumptions, one per term, named below, until measurements on the card replace them via `fit`.

Models: the public `config.json` values of meta-llama/Llama-3.1-8B, Qwen/Qwen2.5-32B and
meta-llama/Llama-3.1-70B (layers, hidden, heads, KV heads, head dim, intermediate, vocab, tied
embeddings). Qwen2.5-32B's context is the 131,072 tokens its card documents with YaRN (config.json
says 32,768 without it), so long Mooncake prompts are not cut.
"""
from gyges.model.config import ModelConfig
from gyges.policy.cost_model import HardwareProfile

GIB = 2 ** 30
MIB = 2 ** 20
MEMORY_UTILIZATION = 0.9

# Achieved fractions of the datasheet rates (assumptions, stated once): decode GEMV and paged
# attention reach about 80% of HBM bandwidth; large GEMMs about 60% of dense peak; NCCL all-reduce
# about 70% of NVLink bandwidth per direction, ~10 us latency per small all-reduce; peer copies
# (transformation moves) about 80%. A vLLM-like step costs ~3 ms of scheduling and launch, and a
# switch ~20 ms of barriers and new block tables.
# TP efficiency: memory and FLOP rates achieved per doubling of the TP degree. Calibrated, not measured:
# 0.64 is where `gyges.sim.paper.tp4_loss` reproduces the paper's 57% loss from 4xTP1 to 1xTP4 for
# Qwen2.5-32B on H100 with saturated instances of 256-token contexts (the paper's only figure for
# it; its exact workload is not given). The same value is assumed for A100 and H200.
EFFICIENCY = dict(mem_efficiency=0.8, flop_efficiency=0.6, link_efficiency=0.7, transfer_efficiency=0.8,
                  link_latency=10e-6, step_overhead_s=3e-3, switch_overhead_s=20e-3, tp_efficiency=0.64)


def _gpu(name: str, hbm_tb_s: float, bf16_tflops: float, nvlink_gb_s_bidir: float, smi_mib: int) -> HardwareProfile:
    return HardwareProfile(name, mem_bandwidth=hbm_tb_s * 1e12, peak_flops=bf16_tflops * 1e12,
                           link_bandwidth=nvlink_gb_s_bidir / 2 * 1e9,
                           memory_bytes=int(smi_mib * MIB * MEMORY_UTILIZATION), **EFFICIENCY)


GPUS: dict[str, HardwareProfile] = {
    "h100": _gpu("H100-80GB SXM (datasheet)", 3.35, 989.0, 900.0, 81559),
    "a100": _gpu("A100-80GB SXM (datasheet)", 2.039, 312.0, 600.0, 81920),
    "h200": _gpu("H200-141GB SXM (datasheet)", 4.8, 989.0, 900.0, 143771),
}


def _config(vocab, hidden, inter, layers, heads, kv_heads, theta, max_pos, tie=False, qwen=False) -> ModelConfig:
    return ModelConfig(arch="qwen2" if qwen else "llama", vocab_size=vocab, hidden_size=hidden,
                       intermediate_size=inter, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
                       head_dim=hidden // heads, rms_norm_eps=1e-5 if not qwen else 1e-6, rope_theta=theta,
                       max_position_embeddings=max_pos, tie_word_embeddings=tie, qkv_bias=qwen)


MODELS: dict[str, ModelConfig] = {
    "llama-3.1-8b": _config(128256, 4096, 14336, 32, 32, 8, 500000.0, 131072),
    "qwen2.5-32b": _config(152064, 5120, 27648, 64, 40, 8, 1000000.0, 131072, qwen=True),
    "llama-3.1-70b": _config(128256, 8192, 28672, 80, 64, 8, 500000.0, 131072),
}


def gpu(name: str) -> HardwareProfile:
    if name.lower() not in GPUS:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")
    return GPUS[name.lower()]


def model(name: str) -> ModelConfig:
    if name.lower() not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name.lower()]
