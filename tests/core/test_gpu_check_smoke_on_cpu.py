"""benchmarks/gpu_check.py: the --smoke run on the CPU writes every key, and its verl-free GRPO equals verl's.

The GPU check itself needs a GPU; this runs the same code on tiny shapes, in a subprocess (as a user
runs it), and checks its JSON contract. The GPU box has no verl: the subprocess makes
verl unimportable (``sys.modules["verl"] = None``), so a hidden verl dependency fails here.
"""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

GPU_CHECK = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
KEYS = (
    "focus_speedup_vs_token_loop",
    "logprob_time_ratio_focus_vs_base",
    "focus_extra_peak_bytes_per_token",
    "all_hidden_states_extra_peak_bytes_per_token",
    "estimator_ms",
    "grpo_estimator_ms",
)
POSITIVE = ("focus_speedup_vs_token_loop", "logprob_time_ratio_focus_vs_base", "estimator_ms", "grpo_estimator_ms")


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_without_verl(code: str, timeout: int):
    """Run ``code`` in a fresh interpreter in which ``import verl`` raises ImportError."""
    prelude = "import sys; sys.modules['verl'] = None; "
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=timeout)


def test_smoke_run_without_verl_writes_every_key(tmp_path):
    out = tmp_path / "smoke.json"
    done = run_without_verl(
        f"import runpy; sys.argv = ['gpu_check.py', '--smoke', '--out', {str(out)!r}]; "
        f"runpy.run_path({str(GPU_CHECK)!r}, run_name='__main__')",
        timeout=170,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in KEYS:
        assert isinstance(result[key], (int, float)) and math.isfinite(result[key]), key
    for key in POSITIVE:
        assert result[key] > 0, key
    assert result["device"].startswith("cpu") and result["smoke"] is True
    assert set(result["shapes"]) == {"focus", "logprob", "estimator", "focus_field"}
    # the response-only field: a third of the full one at the recipe's 2:1 prompt:response, cut exactly
    assert result["focus_field_bytes_full"] == 3 * result["focus_field_bytes_response_only"] > 0
    assert result["focus_response_cut_exact"] is True
    assert result["verl_imported"] is False
    assert result["focus_max_abs_diff_vs_token_loop"] < 1e-4  # the loop and the vectorised scores agree
    assert result["logprob_image_tokens"] > 0


def test_the_check_imports_without_verl():
    done = run_without_verl(
        f"import importlib.util; s = importlib.util.spec_from_file_location('g', {str(GPU_CHECK)!r}); "
        "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); print(m.FocusHook.__name__)",
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "FocusHook"


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_verl_free_grpo_equals_verls_grpo(norm, seed):
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    gpu_check = load_gpu_check()
    g = torch.Generator().manual_seed(seed)
    bs, L = 30, 17
    lengths = torch.randint(1, L + 1, (bs,), generator=g)
    mask = (torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)).float()
    rewards = torch.zeros(bs, L)
    rewards[torch.arange(bs), lengths - 1] = torch.randint(0, 3, (bs,), generator=g).float() / 2
    uids = torch.randint(0, 7, (bs,), generator=g).tolist()
    uids[0] = 99  # a group of one
    index = np.array([f"u{u}" for u in uids], dtype=object)
    expected = compute_grpo_outcome_advantage(rewards, mask, index, norm_adv_by_std_in_grpo=norm)[0]
    ours = gpu_check.grpo_equivalent(rewards, mask, index, norm_adv_by_std_in_grpo=norm)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
