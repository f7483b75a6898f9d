"""Unit tests for vtom.locate: metrics on hand-made cases, the window rule, leave-one-out state safety, the head."""
import numpy as np
import pytest
import torch

from vtom.core import VtomError
from vtom.locate import (HashingQueryEncoder, MomentExample, centre_window, feature_change_scores, frame_bounds, hit_at_k,
                         loo_importance, moment_metrics, prior_window, scores_to_window, temporal_iou, train_moment_head,
                         head_scores)


def test_iou_hand_cases():
    assert temporal_iou([0, 10], [5, 15]) == pytest.approx(1 / 3)
    assert temporal_iou([0, 10], [10, 20]) == 0.0           # touching windows do not overlap
    assert temporal_iou([1, 3], [0, 4]) == pytest.approx(0.5)
    assert temporal_iou([0, 0], [0, 1]) == 0.0
    with pytest.raises(VtomError): temporal_iou([[0, 1], [0, 2]], [[0, 1]])
    with pytest.raises(VtomError): temporal_iou([0, 1, 2], [0, 1])


def test_moment_metrics_exact():
    preds = [[0, 10], [0, 2], [2, 4], [0, 1], [0, 7]]
    gts = [[5, 15], [0, 4], [2, 4], [5, 6], [0, 10]]        # IoUs 1/3, 1/2, 1, 0, 0.7
    m = moment_metrics(preds, gts)
    assert m["R1@0.3"] == pytest.approx(4 / 5) and m["R1@0.5"] == pytest.approx(3 / 5)
    assert m["R1@0.7"] == pytest.approx(2 / 5)              # IoU exactly 0.7 counts
    assert m["mIoU"] == pytest.approx((1 / 3 + 0.5 + 1 + 0 + 0.7) / 5) and m["n"] == 5
    assert np.isnan(moment_metrics([], [])["mIoU"])


def test_hit_at_k():
    ts = np.arange(5) + 0.5
    s = [5, 4, 3, 2, 1]
    assert not hit_at_k(s, ts, [2, 5], k=2) and hit_at_k(s, ts, [2, 5], k=3)
    assert hit_at_k(s, ts, [0.5, 0.5], k=1)                 # inclusive bounds


def test_scores_to_window_rules():
    ts = np.arange(8) * 2 + 1.0                             # 8 frames, one per 2 s, 16 s video
    assert np.allclose(frame_bounds(ts, 16)[:, 1] - frame_bounds(ts, 16)[:, 0], 2)
    s = np.zeros(8); s[2:5] = 1
    assert scores_to_window(s, ts, 16) == (4.0, 10.0)
    assert scores_to_window(s, ts, 16, rule="fixed", width=4) == (4.0, 8.0)
    with pytest.raises(VtomError): scores_to_window(s[:3], ts, 16)
    with pytest.raises(VtomError): scores_to_window(s, ts, 16, rule="nope")
    with pytest.raises(VtomError): scores_to_window(np.full(8, np.nan), ts, 16)


def test_baselines():
    assert centre_window(20, 5) == (7.5, 12.5)
    f = prior_window([[1, 2], [3, 6]], [10, 20])
    assert f(100) == pytest.approx((12.5, 25.0))


def test_loo_restores_state_and_batches_consistently():
    torch.manual_seed(0)
    proj = torch.nn.Linear(4, 1)
    feats = torch.randn(10 + 3, 4)
    state = {k: v.clone() for k, v in proj.state_dict().items()}
    params = [id(p) for p in proj.parameters()]
    before = feats.clone()
    fn = lambda b: torch.tanh(proj(b[:, :10])).sum((1, 2))
    a = loo_importance(fn, feats, 10, batch_size=3)
    b = loo_importance(fn, feats, 10, batch_size=100)
    assert np.allclose(a, b, atol=1e-6) and a.shape == (10,)
    assert torch.equal(feats, before)
    assert all(torch.equal(v, proj.state_dict()[k]) for k, v in state.items())
    assert params == [id(p) for p in proj.parameters()]
    with pytest.raises(VtomError): loo_importance(fn, feats, 10, mode="drop")


def test_change_scores_and_head_learn_a_step():
    x = torch.zeros(12, 3); x[6:, 0] = 5
    assert feature_change_scores(x, smooth=1).argmax() == 6
    rng = np.random.default_rng(0)
    exs = []
    for i in range(40):
        f = torch.from_numpy(rng.normal(0, 0.2, (12, 3))).float()
        a = int(rng.integers(0, 8)); f[a:a + 3, 1] += 3
        exs.append(MomentExample(f"q{i}", f"v{i}", "when?", f, np.arange(12) + 0.5, 12.0, (float(a), float(a + 3))))
    enc = HashingQueryEncoder(8)
    head, log = train_moment_head(exs[:30], enc, steps=80, seed=0)
    preds = [scores_to_window(s, e.timestamps, e.duration, threshold=0.5) for s, e in zip(head_scores(head, exs[30:], enc), exs[30:])]
    assert moment_metrics(preds, [e.window for e in exs[30:]])["R1@0.5"] >= 0.8
    assert log[-1]["loss"] < log[0]["loss"]


def test_load_moments_errors(tmp_path):
    from vtom.data import DataFormatError
    from vtom.locate import load_moments
    f = tmp_path / "moments_test.jsonl"
    f.write_text('{"qid": "a", "vid_name": "v", "query": "when?", "window": [1, 2]}\n{"qid": "b", "vid_name": "v", "query": "q", "window": [3, 1]}\n')
    with pytest.raises(DataFormatError, match=r"moments_test.jsonl:2"): load_moments(f)
    f.write_text('{"qid": "a", "vid_name": "v", "window": [1, 2]}\n')
    with pytest.raises(DataFormatError, match="query"): load_moments(f)


def test_rows_by_handles_partial_methods():
    from vtom.locate import retrieval_table, rows_by
    exs = [MomentExample(f"q{i}", "v", "when?", torch.zeros(4, 2), np.arange(4) + 0.5, 4.0, (1.0, 2.0), "fb",
                         extra={"mtype": "move" if i % 2 else "hide"}) for i in range(4)]
    methods = {"all": {"windows": [(1.0, 2.0)] * 4},
               "some": {"index": [1, 2], "windows": [(1.0, 2.0), (3.0, 4.0)], "scores": [np.array([0, 1, 0, 0.])] * 2}}
    rows = {(r["mtype"], r["method"]): r for r in rows_by(exs, methods)}
    assert rows[("move", "all")]["n"] == 2 and rows[("move", "some")]["n"] == 1 and rows[("move", "some")]["R1@0.5"] == 1.0
    assert rows[("hide", "some")]["n"] == 1 and rows[("hide", "some")]["R1@0.5"] == 0.0
    assert {r["n"] for r in retrieval_table(exs, methods) if r["family"] == "all"} == {4, 2}


def test_never_is_scored_separately():
    from vtom.locate import method_windows, retrieval_table
    mk = lambda q, w, v: MomentExample(q, v, "when does A start to believe something false?", torch.zeros(4, 2), np.arange(4) + 0.5, 4.0, w,
                                       "f", extra={"mtype": "belief_false"})
    exs = [mk("a", None, "v0"), mk("b", None, "v1"), mk("c", (1.0, 2.0), "v2")]
    rows = {r["method"]: r for r in retrieval_table(exs, {"never": {"windows": [None] * 3}, "right": {"windows": [None, None, (1.0, 2.0)]},
                                                          "always a window": {"windows": [(1.0, 2.0)] * 3}}, by_family=False)}
    assert rows["never"]["never acc"] == pytest.approx(2 / 3) and rows["never"]["R1@0.5"] == 0.0 and rows["never"]["n"] == 1
    assert rows["right"]["never acc"] == 1.0 and rows["right"]["R1@0.5"] == 1.0 and rows["right"]["n never"] == 2
    assert rows["always a window"]["never acc"] == pytest.approx(1 / 3) and rows["always a window"]["R1@0.5"] == 1.0
    # the query-type prior answers "never" for a type whose training answers mostly were
    train = [mk(f"t{i}", None if i < 3 else (0.0, 1.0), f"w{i}") for i in range(4)]
    assert method_windows(exs, train)["query-type prior"]["windows"] == [None, None, None]
    assert (exs[0].labels() == 0).all()


def test_loo_is_paired_with_the_evidence_window(tmp_path):
    from vtom.data import MCQuestion
    from vtom.features import FeatureStore, save_features
    from vtom.locate import evidence_examples
    save_features(tmp_path / "v.safetensors", torch.randn(6 + 2, 4), {"frames": 6, "timestamps": [0.5, 1.5, 2.5, 3.5, 4.5, 5.5], "duration": 6.0})
    qs = [MCQuestion("v_q2", "Where will A look?", ["x", "y", "z", "w"], "v", answer_idx=1, subset="true_belief", qtype="belief",
                     raw={"evidence": [3.0, 4.5]}),
          MCQuestion("v_q1", "Where is it?", ["x", "y", "z", "w"], "v", answer_idx=1, qtype="reality", raw={"evidence": [3.0, 4.5]})]
    exs, pairs = evidence_examples(qs, FeatureStore(tmp_path))
    assert [e.qid for e in exs] == ["v_q2"] and exs[0].window == (3.0, 4.5) and pairs == {"v_q2": qs[0]}
    assert exs[0].query == "Where will A look?" and exs[0].extra["mtype"] == "evidence:belief"
    with pytest.raises(VtomError, match="evidence"): evidence_examples([MCQuestion("q", "?", ["a"] * 4, "v", answer_idx=0, qtype="belief")],
                                                                     FeatureStore(tmp_path))


def test_locate_does_not_hold_the_experiment():
    import vtom.locate as loc
    assert not any(hasattr(loc, n) for n in ("goal_report", "goal_verdicts", "report_markdown", "synth_features", "thumbnail_tower"))
