"""The fake TransferQueue behaves like the real client in what the trainer layer relies on.

The trainer tests use ``FakeTransferQueue``; this test runs the same calls against the real
TransferQueue (a local Ray instance in a subprocess, ~20 s) and compares: a requested field that no
key has is dropped silently (why the trainer must check for the focus field itself), per-sample 1-D
fields (also the one-value-per-row focus seconds) come back as jagged nested tensors (NaN intact), and ``kv_batch_put`` returns the stored tags
(where the trainer reads ``seq_len`` from).
"""

import json
import os
import subprocess
import sys

import pytest

from tests.wiring.fakes import FakeTransferQueue

SCENARIO = r'''
import json, torch
from tensordict import TensorDict

def scenario(tq):
    keys = ["q0_0_0", "q0_1_0"]
    mask = torch.nested.as_nested_tensor([torch.ones(3, dtype=torch.int64), torch.ones(2, dtype=torch.int64)], layout=torch.jagged)
    tags = [{"seq_len": 7}, {"seq_len": 5}]
    first = tq.kv_batch_put(keys=keys, partition_id="train", fields=TensorDict({"response_mask": mask}, batch_size=2), tags=tags)
    missing = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["vgpo_focus", "response_mask"])
    focus = torch.nested.as_nested_tensor([torch.full((7,), float("nan")), torch.arange(5.0)], layout=torch.jagged)
    seconds = torch.nested.as_nested_tensor([torch.tensor([0.25]), torch.tensor([0.5])], layout=torch.jagged)
    fields = TensorDict({"vgpo_focus": focus, "vgpo_focus_seconds": seconds}, batch_size=2)
    second = tq.kv_batch_put(keys=keys, partition_id="train", fields=fields)
    got = tq.kv_batch_get(
        keys=keys, partition_id="train", select_fields=["vgpo_focus", "vgpo_focus_seconds", "response_mask"]
    )
    return {
        "tags_after_put_with_tags": first.tags,
        "tags_after_put_without_tags": second.tags,
        "fields_when_one_is_missing": sorted(missing.keys()),
        "focus_is_nested": bool(got["vgpo_focus"].is_nested),
        "focus_offsets": got["vgpo_focus"].offsets().tolist(),
        "focus_values": [None if v != v else v for v in got["vgpo_focus"].values().tolist()],
        "mask_offsets": got["response_mask"].offsets().tolist(),
        "seconds_offsets": got["vgpo_focus_seconds"].offsets().tolist(),
        "seconds_values": got["vgpo_focus_seconds"].values().tolist(),
    }
'''

REAL_CLIENT = SCENARIO + r'''
import ray, transfer_queue
ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
transfer_queue.init()
try:
    print("RESULT " + json.dumps(scenario(transfer_queue)))
finally:
    transfer_queue.close()
    ray.shutdown()
'''


@pytest.mark.slow  # starts a real TransferQueue
def test_fake_transfer_queue_matches_the_real_client():
    namespace = {}
    exec(SCENARIO, namespace)
    fake_result = namespace["scenario"](FakeTransferQueue())

    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_DEDUP_LOGS="0")
    run = subprocess.run([sys.executable, "-c", REAL_CLIENT], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    real_result = json.loads(lines[-1][len("RESULT ") :])

    assert real_result["fields_when_one_is_missing"] == ["response_mask"]
    assert real_result["tags_after_put_without_tags"] == [{"seq_len": 7}, {"seq_len": 5}]
    assert fake_result == real_result
