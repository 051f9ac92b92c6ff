import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from specfair.evaluation.acceptance import CategoryAcceptance, predicted_block_efficiency


def record(category, accept, propose, new_tokens, wall=1.0, base_wall=2.0, base_tokens=None, draft_s=0.1):
    return {
        "category": category,
        "new_tokens": new_tokens,
        "proposed": sum(propose),
        "accepted": sum(accept),
        "blocks": len(accept),
        "rejections": sum(n < g for n, g in zip(accept, propose, strict=True)),
        "accept_lengths": accept,
        "proposed_lengths": propose,
        "wall_s": wall,
        "baseline_wall_s": base_wall,
        "baseline_new_tokens": new_tokens if base_tokens is None else base_tokens,
        "draft_s": draft_s,
    }


RECORDS = [
    # gamma = 3. a: blocks (3 of 3), (1 of 3), (0 of 2: cut short) -> 1 + 4 + 2 + 1 = 8 tokens
    record("a", [3, 1, 0], [3, 3, 2], 8, wall=1.0, base_wall=2.0, draft_s=0.8),
    # b: blocks (2 of 3), (3 of 3) -> 1 + 3 + 4 = 8 tokens
    record("b", [2, 3], [3, 3], 8, wall=2.0, base_wall=3.0, draft_s=0.6),
    record("b", [0], [3], 2, wall=0.5, base_wall=0.5, draft_s=0.3),
]


def test_hand_computed_values():
    metric = CategoryAcceptance(["a", "b", "c"], gamma=3)
    for r in RECORDS:
        metric.update(r)
    out = metric.compute()
    a, b, overall = out["categories"]["a"], out["categories"]["b"], out["overall"]
    assert a["proposed"] == 8 and a["accepted"] == 4 and a["blocks"] == 3 and a["rejections"] == 2
    assert a["acceptance_rate"] == pytest.approx(4 / 8)
    assert a["alpha"] == pytest.approx(4 / (4 + 2))
    assert a["target_calls"] == 4 and a["block_efficiency"] == pytest.approx(8 / 4)
    # position i: blocks with n >= i+1 over blocks with gamma_b >= i+1
    assert a["position_acceptance"] == pytest.approx([2 / 3, 1 / 3, 1 / 2])
    assert a["speedup"] == pytest.approx(2.0)
    assert b["prompts"] == 2 and b["alpha"] == pytest.approx(5 / (5 + 2))
    assert b["position_acceptance"] == pytest.approx([2 / 3, 2 / 3, 1 / 3])
    assert b["speedup"] == pytest.approx(3.5 / 2.5)  # ratio of sums, not mean of ratios
    assert b["tokens_per_s"] == pytest.approx(10 / 2.5)
    assert overall["accepted"] == 9 and overall["proposed"] == 17 and overall["target_calls"] == 9
    assert overall["block_efficiency"] == pytest.approx(18 / 9)
    # c = (draft s / draft step) / (target s / token) = (1.7 / 17) / (5.5 / 18)
    assert overall["draft_target_cost_ratio"] == pytest.approx((1.7 / 17) / (5.5 / 18))
    empty = out["categories"]["c"]
    assert empty["prompts"] == 0 and empty["alpha"] is None and empty["speedup"] is None


def test_leviathan_block_efficiency():
    assert predicted_block_efficiency(0.0, 4) == 1.0
    assert predicted_block_efficiency(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert predicted_block_efficiency(1.0, 4) == 5.0


def _ddp_worker(rank, world, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    metric = CategoryAcceptance(["a", "b", "c"], gamma=3)
    for r in RECORDS[rank::world]:
        metric.update(r)
    out = metric.compute()
    if rank == 0:
        queue.put(out)
    dist.barrier()
    dist.destroy_process_group()


def test_two_process_ddp_reduction_equals_one_process():
    single = CategoryAcceptance(["a", "b", "c"], gamma=3)
    for r in RECORDS:
        single.update(r)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = 29500 + os.getpid() % 1000
    procs = [ctx.Process(target=_ddp_worker, args=(rank, 2, port, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    reduced = queue.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert reduced == single.compute()


def test_states_are_replaced_not_written_in_place():
    """ddp_spawn shares CPU tensors between processes: an in-place write by index would race."""
    metric = CategoryAcceptance(["a", "b"], gamma=2)
    before = metric.accepted
    metric.update(record("a", [1], [2], 2))
    assert before.sum() == 0 and metric.accepted is not before
    assert torch.equal(metric.accepted, torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_untimed_and_sampled_replay_records_give_none_never_zero_or_nonsense():
    """Replay: no timing (wall times None); at temperature > 0 only the expectation, no counter ratios."""
    greedy = CategoryAcceptance(["a"], gamma=3)
    greedy.update({**record("a", [3, 1, 0], [3, 3, 2], 8), "wall_s": None, "baseline_wall_s": None,
                   "baseline_new_tokens": 0, "draft_s": None})  # fmt: skip
    g = greedy.compute()["overall"]
    assert g["alpha"] == pytest.approx(4 / 6) and g["block_efficiency"] == pytest.approx(8 / 4)
    assert g["wall_s"] is None and g["baseline_wall_s"] is None and g["speedup"] is None
    assert g["tokens_per_s"] is None and g["expected_alpha"] is None
    sampled = CategoryAcceptance(["a"], gamma=3)
    sampled.update({**record("a", [], [], 32), "wall_s": None, "baseline_wall_s": None, "baseline_new_tokens": 0,
                    "expected_accept_sum": 15.5, "expected_positions": 31})  # fmt: skip
    s = sampled.compute()["overall"]
    assert s["expected_alpha"] == pytest.approx(0.5)
    assert s["expected_block_efficiency"] == pytest.approx((1 - 0.5**4) / 0.5)
    assert s["expected_accepted_per_block"] == pytest.approx(s["expected_block_efficiency"] - 1)
    assert s["block_efficiency"] is None and s["alpha"] is None and s["target_calls"] is None
