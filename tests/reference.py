"""Compare Gyges outputs with a `transformers` model run on the same tokens."""
import torch

TOLERANCE = 1e-4


def check_against_reference(ref_model, outputs, tolerance: float = TOLERANCE) -> float:
    """Assert the tolerance rule for every step of every output; return the worst relative error.

    The reference runs teacher-forced on each output's prompt and tokens. At every step the logits
    must agree within tolerance * max|ref|, and the chosen token must be the reference's argmax,
    except where the reference's top two logits are closer than that: there it must be one of the two.
    """
    worst = 0.0
    for o in outputs:
        assert o.error is None, o.error
        assert len(o.logits) == len(o.token_ids), "every generated token needs its logits recorded"
        ids = torch.tensor([o.prompt_ids + o.token_ids])
        with torch.no_grad():
            ref = ref_model(ids).logits[0, len(o.prompt_ids) - 1:].float()
        for step, (row, tok) in enumerate(zip(o.logits, o.token_ids)):
            r = ref[step]
            scale = r.abs().max().item()
            err = (torch.from_numpy(row) - r).abs().max().item() / scale
            worst = max(worst, err)
            assert err <= tolerance, f"step {step}: relative logit error {err:.2e}"
            top2 = torch.topk(r, 2)
            if (top2.values[0] - top2.values[1]).item() > tolerance * scale:
                assert tok == top2.indices[0].item(), f"step {step}: token {tok} != reference {top2.indices[0].item()}"
            else:
                assert tok in top2.indices.tolist(), f"step {step}: near-tie, token {tok} not in the top two"
    return worst
