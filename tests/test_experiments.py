"""Unit tests for vtom.experiments, vtom.perception and vtom.study_temporal: per-frame facts, probes, the thumbnail tower by name."""
import numpy as np
import torch


def test_frame_facts():
    from vtom.experiments import frame_facts
    ev = {"layout": {"containers": [{"name": "red box", "x": 150}, {"name": "blue jar", "x": 20}]},
          "frames": {"t": [0, 1, 2, 3], "location": ["red box", "held:B", "blue jar", "blue jar"], "visible": [False, True, True, False],
                     "present_A": [True, True, False, True], "sees_scene_A": [True, False, False, True],
                     "belief_false_A": [False, False, True, True]}}
    f = frame_facts(ev, [0.0, 1.4, 2.1])                    # nearest event frames 0, 1, 2
    assert f["object_slot"] == ["slot1", "held", "slot0"]   # slots ordered by x: blue jar (x=20) is slot0
    assert f["object_slot_when_visible"] == [None, "held", "slot0"] and f["A_belief_false"] == [False, False, True]
    assert frame_facts(ev, [2.6])["object_slot_when_visible"] == [None]


def test_linear_probe_finds_a_linear_fact():
    from vtom.experiments import linear_probe
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 10, generator=g); y = (x[:, 3] > 0).long().tolist()
    r = linear_probe(x[:200], y[:200], x[200:], y[200:])
    assert r["accuracy"] > 0.9 and r["majority"] < 0.7


def test_thumbnail_tower_is_registered():
    from vtom.features import load_vision_tower
    from vtom.registry import list_towers
    t = load_vision_tower("thumbnail:7", device="cpu")
    px = torch.zeros(1, 3, 224, 224); px[0, 0] = 1.0
    tok = t.encode(px)
    assert "thumbnail:14" in list_towers() and tok.shape == (1, 49, 147)
    assert torch.allclose(tok.mean(1)[0].reshape(49, 3), torch.tensor([1.0, 0, 0]).expand(49, 3))


def _hand_report(val_a: dict) -> dict:
    vids = {f"q{i}": f"v{i // 2}" for i in range(40)}
    right = {q: 1 for q in vids}; coin = {q: int(q[-1] in "02468") for q in vids}
    return {"paired": {"belief": {"metric": "accuracy", "videos": vids, "shared": {"reality": coin, "first container": {q: 0 for q in vids}},
                                  "candidates": {"video (A)": {"val": val_a, "test": right, "baselines": {"text (A)": coin}},
                                                 "video (B)": {"val": {"x": 0, "y": 1}, "test": right, "baselines": {"text (B)": right}}}}}}


def test_verdicts_choose_on_val_and_compare_paired_on_test():
    from vtom.experiments import goal_verdicts
    v = goal_verdicts(_hand_report({"x": 1, "y": 1}))["belief"]
    assert v["chosen on val"] == "video (A)" and set(v["comparisons"]) == {"text (A)", "reality", "first container"}
    assert v["met"] and v["best heuristic"] == "reality" and v["comparisons"]["reality"]["ci95"][0] > 0
    # the same test numbers, but B is better on val: B is the model, and B does not beat its own text baseline
    v = goal_verdicts(_hand_report({"x": 0, "y": 0}))["belief"]
    assert v["chosen on val"] == "video (B)" and not v["met"] and v["comparisons"]["text (B)"]["diff"] == 0.0


def test_report_md_opens_with_what_this_run_shows():
    from vtom.experiments import goal_verdicts, report_markdown
    rep = _hand_report({"x": 0, "y": 0})
    rep |= {"goals": goal_verdicts(rep), "synth_dir": "s", "videos": {}, "num_frames": 8, "towers": {}, "llm": "tiny", "train_steps": 0,
            "head_steps": 0, "seed": 0, "probes": [], "retrieval": [], "retrieval_by_mtype": [], "evidence": [], "mc": [], "seconds": {}}
    md = report_markdown(rep)
    head = md.split("\n## Set-up")[0]
    assert md.startswith("# Synthetic false-belief benchmark: goal report\n\n## What this run shows")
    assert "video (B) is not better than text (B): +0.00 [+0.00, +0.00]" in head and "video (B) is better than first container: +1.00" in head
    assert "### Goals" in head and "**not met**" in head and md.index("## What this run shows") < md.index("## Probes")


def test_tracker_targets_columns_and_padding():
    from vtom.perception import tracker_targets
    from vtom.model import TRACKER_PLACES
    ev = {"layout": {"containers": [{"name": "red box", "x": 150}, {"name": "blue jar", "x": 20}]},
          "frames": {"t": [0, 1, 2], "belief_A": [None, "held:A", "blue jar"], "belief_B": ["red box"] * 3,
                     "B_thinks_A_believes": [None, None, "red box"], "sees_scene_A": [True, False, True],
                     "sees_scene_B": [False] * 3, "belief_false_A": [False, True, False], "belief_false_B": [True] * 3}}
    t = tracker_targets(ev, [0.0, 1.1, 1.9], num_frames=5)
    ix = TRACKER_PLACES.index
    assert t[:3, 0].tolist() == [ix("none"), ix("held:A"), ix("slot0")] and t[:3, 2].tolist() == [0, 0, ix("slot1")]
    assert t[:3, 3].tolist() == [1, 0, 1] and t[:3, 5].tolist() == [0, 1, 0] and (t[3:] == -100).all()


def test_temporal_study_dry_run(tmp_path):
    "`vtom temporal --dry-run` (the tom-temporal preset's offline check): every arm, mode and baseline lands in one report, with letters, OOD and decoys."
    import json
    from vtom.model import OBSERVATION_GROUPS
    from vtom.study_temporal import BAG_ARM, temporal_main
    from vtom.synth import HEURISTICS, TAGS
    assert temporal_main(["--dry-run", "--out", str(tmp_path)]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    arms = {(r["arm"], r["mode"]) for r in rep["table"]}
    sources = ("tower features", "learned perception", "oracle perception")
    lm = [f"LM, {a}, learned perception" for a in ("linear", "temporal", "graph", "graph + tracker loss")]
    trackers = [f"tracker alone ({k}), {s}" for k in ("last frame: linear", "graph") for s in sources]
    bags = [f"{BAG_ARM}, {s}" for s in sources]
    for arm in lm + trackers + bags:
        assert {(arm, m) for m in ("video", "shuffled", "blank")} <= arms, arm
    assert ("text (LM, no video)", "text") in arms and {(f"heuristic: {h}", "text") for h in HEURISTICS} <= arms
    rows = {(r["arm"], r["mode"]): r for r in rep["table"]}
    for arm in bags:   # order-free by construction: shuffled frames change no answer
        assert rows[(arm, "video")]["letters (belief)"] == rows[(arm, "shuffled")]["letters (belief)"]
    assert all("OOD belief" in r and "letters (belief)" in r for r in rep["table"] if r["mode"] in ("video", "text"))
    assert "belief, letter-cyclic" in rows[(lm[0], "video")] and rep["ood videos"] == 4
    assert set(TAGS) <= set(rep["decoys"][0]) and rep["best stump (chosen on train)"]["feature"]
    assert {"always 'never'", "tracker alone (graph), learned perception"} <= {r["method"] for r in rep["retrieval"]}
    assert rep["goal"]["chosen on val"] in rep["val belief accuracy"] and any("shuffled" in b for b in rep["paired"])
    assert any(b.startswith(BAG_ARM) for b in rep["paired"]) and not rep["goal"]["chosen on val"].startswith(BAG_ARM)
    assert "oracle" not in rep["goal"]["chosen on val"] and "oracle" in rep["goal with oracle perception"]["chosen on val"]
    assert set(rep["perception"]["perception test accuracy"]) <= set(OBSERVATION_GROUPS) and set(rep["ood perception"]) <= set(OBSERVATION_GROUPS)
    assert (tmp_path / "belief_timeline.png").stat().st_size > 0 and (tmp_path / "learning_curves.png").is_file()
    md = (tmp_path / "report.md").read_text()
    assert "Goal" in md and "Decoy subsets" in md and "OOD belief" in md


def test_bag_of_frames_ignores_the_order_of_frames():
    "The bag's features and answers are the same for any permutation of a video's frames; with fewer containers it never picks a missing one."
    from vtom.model import OBSERVATION_COLUMNS, observation_slices
    from vtom.perception import BagOfFrames, bag_features
    g = torch.Generator().manual_seed(0)
    def video(t):   # random one-hot observation rows
        x = torch.zeros(t, len(OBSERVATION_COLUMNS))
        for s in observation_slices().values(): x[torch.arange(t), s.start + torch.randint(s.stop - s.start, (t,), generator=g)] = 1
        return x
    vids = [video(12) for _ in range(40)]
    x = torch.stack([bag_features(v, 4) for v in vids]); m = torch.ones(40, 4, dtype=torch.bool); m[::2, 3] = False
    y = torch.randint(3, (40,), generator=g)
    bag = BagOfFrames(1e-2).fit(x, m, y)
    shuffled = torch.stack([bag_features(v[torch.randperm(12, generator=g)], 4) for v in vids])
    assert torch.equal(x, shuffled) and torch.equal(bag.predict(x, m), bag.predict(shuffled, m))
    assert (bag.predict(x, m)[::2] != 3).all()


def test_bag_features_see_within_frame_pairs():
    "A pair feature fires only when both observations happen in the same frame, for the candidate container."
    from vtom.model import OBSERVATION_COLUMNS
    from vtom.perception import bag_features
    col = OBSERVATION_COLUMNS.index
    both, apart = torch.zeros(2, len(OBSERVATION_COLUMNS)), torch.zeros(2, len(OBSERVATION_COLUMNS))
    both[0, [col("object=slot1"), col("A mode=absent")]] = 1                       # the object at slot 1 while A is outside
    apart[0, col("object=slot1")] = 1; apart[1, col("A mode=absent")] = 1           # the same two things in different frames
    fb, fa = bag_features(both, 4), bag_features(apart, 4)
    single = 2 * 27                                                                  # means and maxima of the 27 candidate-relative columns
    assert fb.shape == (4, single + 2 * 27 * 28 // 2) and torch.equal(fb[:, :single], fa[:, :single])   # single columns: the same
    assert fb[1, single:].sum() > fa[1, single:].sum()                                # the pair "candidate seen & A outside" only together
