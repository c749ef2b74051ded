import numpy as np
import pytest

from tripletkit.search import metrics


def test_ir_scores_hand_computed():
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1}, "q3": {"x": 0}}
    run = {"q1": {"a": 3.0, "x": 2.0, "b": 1.0}, "q2": {"y": 2.0, "c": 1.0}}
    out = metrics.ir_scores(run, qrels)
    # q1: relevant at ranks 1 and 3; q2 at rank 2; q3 has no relevant document (not judged)
    ndcg_q1 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert out["ndcg@10"] == pytest.approx((ndcg_q1 + 1 / np.log2(3)) / 2)
    assert out["mrr@10"] == pytest.approx((1 + 0.5) / 2)
    assert out["map"] == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)
    assert out["recall@10"] == 1.0


def test_mrr_at_10_ignores_hits_below_rank_10_and_missing_queries_score_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": {f"x{i}": 100.0 - i for i in range(10)} | {"a": 1.0}}
    out = metrics.ir_scores(run, qrels)
    assert out["mrr@10"] == 0.0 and out["recall@100"] == pytest.approx(0.5)


def test_trec_run_format():
    text = metrics.trec_run({"q1": {"a": 0.5, "b": 0.9}}, "tag")
    assert text.splitlines() == ["q1 Q0 b 1 0.900000 tag", "q1 Q0 a 2 0.500000 tag"]
