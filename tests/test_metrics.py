"""Our metrics equal trec_eval's (pytrec_eval) on the same run and qrels."""
import numpy as np
import pytest

from lsb_mm.metrics import evaluate_run

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
