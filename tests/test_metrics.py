"""Our metrics equal trec_eval's (pytrec_eval) on the same run and qrels."""
import numpy as np
import pytest

from lsb_mm.evaluation.metrics import evaluate_run

from conftest import need

try:
    import pytrec_eval
except ImportError:  # the dev extra installs it; CI (LSB_MM_STRICT=1) fails without it
    pytrec_eval = None

TREC = {"ndcg": "ndcg_cut_{k}", "recall": "recall_{k}", "map": "map_cut_{k}"}


def random_case(seed):
    rs = np.random.RandomState(seed)
    docs = [f"d{i}" for i in range(60)]
    qrels, run = {}, {}
    for q in range(40):
        qid = f"q{q}"
        judged = rs.choice(docs, rs.randint(1, 8), replace=False)
        qrels[qid] = {d: int(rs.randint(0, 4)) for d in judged}  # graded, some 0 (judged non-relevant)
        if q % 7 == 0:
            qrels[qid][judged[0]] = 2  # at least one relevant
        ranked = list(rs.choice(docs, 10, replace=False))
        if q % 5 == 0:  # nothing relevant retrieved
            ranked = [d for d in docs if qrels[qid].get(d, 0) == 0][:10]
        run[qid] = ranked
    return run, qrels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_pytrec_eval(seed):
    need(pytrec_eval is not None, "pytrec-eval-terrier not installed")
    run, qrels = random_case(seed)
    ks = (1, 3, 5, 10)
    ours = evaluate_run(run, qrels, ks, per_query=True)["per_query"]
    # distinct, decreasing scores so trec_eval's tie-breaking never matters
    trec_run = {q: {d: float(10 - i) for i, d in enumerate(r)} for q, r in run.items()}
    measures = {f"ndcg_cut.{','.join(map(str, ks))}", f"recall.{','.join(map(str, ks))}",
                f"map_cut.{','.join(map(str, ks))}", "recip_rank", "success.1,5,10"}
    ref = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(trec_run)
    compared = 0
    for qid, r in ref.items():
        for m, pattern in TREC.items():
            for k in ks:
                assert abs(ours[qid][f"{m}@{k}"] - r[pattern.format(k=k)]) <= 1e-6, (qid, m, k)
                compared += 1
        # trec_eval's recip_rank is not cut: with 10 retrieved, MRR@10 is the same number
        assert abs(ours[qid]["mrr@10"] - r["recip_rank"]) <= 1e-6
        for k in (1, 5, 10):
            assert abs(ours[qid][f"success@{k}"] - r[f"success_{k}"]) <= 1e-6
    assert compared == 3 * 4 * len(ref) and len(ref) >= 30
    assert any(v["recall@10"] == 0 for v in ours.values())  # the nothing-retrieved queries are in


def test_query_with_empty_run_counts_as_zero():
    qrels = {"a": {"x": 1}, "b": {"y": 2, "z": 1}}
    res = evaluate_run({"a": ["x"]}, qrels, ks=(1, 10))
    assert res["queries"] == 2
    assert res["metrics"]["ndcg@10"] == pytest.approx(0.5) and res["metrics"]["mrr@1"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        evaluate_run({}, qrels, ks=(0,))


def test_training_logs_use_the_same_recall_as_evaluation():
    """Held-out metrics in the trainer's log follow metrics.py (Recall@k divides by all positives),
    not a 'capped' recall that divides by min(#positives, k)."""
    from lsb_mm.data.training_data import TrainData, TrainExample
    from lsb_mm.training.validation import retrieval_metrics

    passages = ["p0", "p1", "p2", "p3", "p4", "p5"]
    vec = {p: np.eye(6, dtype=np.float32)[i] for i, p in enumerate(passages)}
    # query a: 3 positives, its top-1 is one of them; query b: 1 positive at rank 2
    queries = {"a": 0.9 * vec["p0"] + 0.3 * vec["p1"] + 0.2 * vec["p2"], "b": 0.8 * vec["p4"] + 0.9 * vec["p3"]}
    data = TrainData([TrainExample("a", ["p0", "p1", "p2"], ["p3"]), TrainExample("b", ["p4"], ["p5"])], "text", "jsonl")

    def encode(items, role):
        return np.stack([queries[x] if x in queries else vec[x] for x in items])

    got = retrieval_metrics(data, encode, encode, ks=(1, 3))
    assert got["recall@1"] == pytest.approx((1 / 3 + 0) / 2)  # capped recall would say (1 + 0) / 2
    assert got["recall@3"] == pytest.approx((1 + 1) / 2)
    assert got["success@1"] == pytest.approx(0.5)
    run = {"0": ["0", "1", "2"], "1": ["3", "4", "0"]}
    qrels = {"0": {"0": 1, "1": 1, "2": 1}, "1": {"4": 1}}
    want = evaluate_run(run, qrels, (1, 3))["metrics"]
    assert all(got[k] == pytest.approx(want[k]) for k in got)
