"""The VGPO rollout dump (``vgpo_focus_{step}.jsonl`` beside verl's ``{step}.jsonl``) on verl's real trainer.

A real sync trainer runs one real ``step()`` through the fakes of tests/wiring/fakes.py (TQ, workers; why
they are faked is said there), then verl's own ``_log_rollout_data`` is called as the training loop calls it.
The rows are stored in reverse key order, so the dump must sort them as verl's dump does.
"""

import json
import math

import torch

from tests.wiring.fakes import DEFAULT_SEQUENCES, FakeTokenizer, focus_value
from verl_vgpo.wiring.trainer import FOCUS_DUMP_FILE, PPOTrainerSyncWithVGPO

SEQUENCES = list(reversed(DEFAULT_SEQUENCES))


class DecodingTokenizer(FakeTokenizer):
    """verl's own dump decodes the ids (the fake tokenizer of the other trainer tests has no vocabulary)."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(int(i)) for i in ids)


def dump_step(make_config, make_rig, tmp_path, estimator):
    rig = make_rig(PPOTrainerSyncWithVGPO, make_config(**{"algorithm.adv_estimator": estimator}), SEQUENCES)
    rig.trainer.tokenizer = DecodingTokenizer()
    rig.trainer._init_dump_executor()  # done by verl's init(), which needs Ray
    batch = rig.trainer.step({}, {})
    rig.trainer._log_rollout_data(batch, {}, str(tmp_path))
    rig.trainer._shutdown_dump_executor()
    return rig


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_vgpo_dump_holds_each_rows_own_ids_focus_and_advantages_in_verls_order(make_config, make_rig, tmp_path):
    rig = dump_step(make_config, make_rig, tmp_path, "vgpo")

    verl_rows = read_jsonl(tmp_path / "1.jsonl")
    rows = read_jsonl(tmp_path / FOCUS_DUMP_FILE.format(step=1))
    assert [row["uid"] for row in rows] == [row["uid"] for row in verl_rows] == sorted(s.key for s in SEQUENCES)
    by_key = {s.key: (i, s) for i, s in enumerate(SEQUENCES)}
    for row in rows:
        i, s = by_key[row["uid"]]
        assert row["step"] == 1
        assert row["prompt_ids"] == rig.fake_tq.field(s.key, "prompts").tolist()
        assert row["response_ids"] == rig.fake_tq.field(s.key, "responses").tolist()
        assert len(row["response_ids"]) == s.response_len
        # the raw focus of each response token at its own position; no image: null, not NaN (valid JSON)
        want = [focus_value(i, s.prompt_len + t) if s.has_image else None for t in range(s.response_len)]
        for got, expected in zip(row["focus"], want, strict=True):
            assert (got is None) == (expected is None), s.key
            assert got is None or math.isclose(got, expected, rel_tol=1e-6), s.key
        torch.testing.assert_close(torch.tensor(row["advantages"]), rig.fake_tq.field(s.key, "advantages"))
    assert any(row["focus"][0] is None for row in rows) and any(row["focus"][0] is not None for row in rows)


def test_other_estimators_write_verls_dump_only(make_config, make_rig, tmp_path):
    dump_step(make_config, make_rig, tmp_path, "grpo")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.jsonl"]


def test_dump_order_is_numeric_in_rollout_and_output_index_like_verls():
    from verl_vgpo.wiring.trainer import _dump_sort_key

    keys = ["q1_10_0", "q1_2_0", "q0_1_1", "q0_1_0", "pad3_0_0"]
    # verl's _log_rollout_data sorts by (sample, int(rollout), int(output)); a plain string sort would put
    # rollout 10 before rollout 2
    assert sorted(keys, key=_dump_sort_key) == ["pad3_0_0", "q0_1_0", "q0_1_1", "q1_2_0", "q1_10_0"]
    assert sorted(keys) != sorted(keys, key=_dump_sort_key)


def test_vgpo_dump_is_written_by_verls_dump_executor_not_in_the_loop(make_config, make_rig, tmp_path):
    import threading

    rig = make_rig(PPOTrainerSyncWithVGPO, make_config(**{"algorithm.adv_estimator": "vgpo"}), SEQUENCES)
    rig.trainer.tokenizer = DecodingTokenizer()
    rig.trainer._init_dump_executor()
    batch = rig.trainer.step({}, {})
    gate = threading.Event()
    rig.trainer._dump_executor.submit(gate.wait)  # the executor's one thread is busy until the gate opens
    try:
        rig.trainer._log_rollout_data(batch, {}, str(tmp_path))  # returns although nothing could be written yet
        assert not (tmp_path / FOCUS_DUMP_FILE.format(step=1)).exists()
    finally:
        gate.set()
    rig.trainer._shutdown_dump_executor()  # verl drains its executor at the end of training
    assert len(read_jsonl(tmp_path / FOCUS_DUMP_FILE.format(step=1))) == len(SEQUENCES)
