"""ToMLoc (vtom.tomloc): joined features against a really joined video, label arithmetic (with the reference's three
defects as regression cases), the build on the Social-IQ 2.0 file format, scoring, the paired comparison and the CLI."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vtom.core import VtomError
from vtom.features import FeatureStore, save_features
from vtom.study_tomloc import evaluate_tomloc, mix_training, paired_accuracy, tomloc_main
from vtom.tomloc import (build_tomloc, clip_offsets, format_index, index_prompt, join_features, load_tomloc, midpoint_index, parse_index,
                         shift_window, window_frames)

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_QA = ROOT / "data" / "fixtures" / "siq2" / "qa" / "qa_train.json"


def _siq2_lines(path: Path, videos: dict[str, int], ts: str = "0.00-60.019000") -> Path:
    "Questions in the real Social-IQ 2.0 format (JSON lines, all fields) about `videos` (id -> number of questions)."
    rows = []
    for vid, n in videos.items():
        for k in range(n):
            rows.append({"qid": f"{vid}_q{k}_0", "q": f"Why does person {k} in {vid} smile?", "vid_name": vid, "ts": ts,
                         "ans_corr": "b", "answer_idx": k % 4, "idx_types": ["corr", "matched", "matched", "rewrite"],
                         "a0": "a", "a1": "b", "a2": "c", "a3": "d"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _fake_store(folder: Path, clips: dict[str, tuple[int, int, float]], P: int = 4, D: int = 6, seed: int = 0) -> Path:
    "A feature store without a tower: id -> (real frames, num_frames, duration), headers like `vtom features` writes."
    g = torch.Generator().manual_seed(seed)
    for vid, (t, n, dur) in clips.items():
        feats = torch.randn(n + P, D, generator=g)
        feats[t:n] = 0
        ts = [round(dur * (i + 0.5) / t, 4) for i in range(t)]
        save_features(folder / f"{vid}.safetensors", feats.half(), {"video_id": vid, "frames": t, "num_frames": n,
                                                                    "timestamps": ts, "duration": dur, "tower": "fake"})
    return folder


# --- joined features = encoding the really joined video -------------------------------------------------------------

@pytest.mark.parametrize("keep_tokens", [False, True])
def test_joined_features_equal_encoding_the_joined_video(tmp_path, keep_tokens):
    import av
    import torch.nn.functional as F
    from vtom.decode import packaged_video, read_video
    from vtom.features import extract_to_store, features_from_clip, load_vision_tower
    clips = {"bikes": packaged_video("bikes"), "carphone_pristine": packaged_video("carphone"), "bigbuckbunny": packaged_video("bigbuckbunny")}
    tower = load_vision_tower("random:ViT-B-32", device="cpu", dtype="fp32")  # the join's arithmetic, not bf16 rounding
    n = 6
    extract_to_store(list(clips.values()), tmp_path / "store", tower, num_frames=n, keep_tokens=keep_tokens, progress=False)
    summary = build_tomloc(_siq2_lines(tmp_path / "qa.json", {v: 2 for v in clips}), tmp_path / "store", tmp_path / "tl", n_clips=3)
    assert summary["joined_from"] == ["tokens" if keep_tokens else "pooled features"]
    store = FeatureStore(tmp_path / "tl" / "features")
    sid = store.ids()[0]
    meta = store.meta(sid)
    # the really joined video: each clip's sampled frames, stretched to the tower's size the way vtom.features does,
    # one after the other in the sample's clip order, written losslessly (FFV1) and decoded again
    frames = []
    for c in meta["clips"]:
        x = torch.from_numpy(read_video(clips[c["video_id"]], n).frames).permute(0, 3, 1, 2)
        frames.append(F.interpolate(x, size=(tower.image_size,) * 2, mode="nearest").permute(0, 2, 3, 1).numpy())
    frames = np.concatenate(frames)
    path = tmp_path / "joined.mkv"
    with av.open(str(path), "w") as box:
        st = box.add_stream("ffv1", rate=8)
        st.width = st.height = tower.image_size
        st.pix_fmt = "bgr0"
        for f in frames:
            for p in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")): box.mux(p)
        for p in st.encode(): box.mux(p)
    joined_clip = read_video(path, indices=range(len(frames)))
    assert np.array_equal(joined_clip.frames, frames), "the joined video must be lossless for this test to mean anything"
    direct, _ = features_from_clip(joined_clip, tower, num_frames=3 * n)
    built = store[sid]
    assert built.shape == direct.shape == (3 * n + 49, 768)
    err = (built.float() - direct.float()).abs().max() / direct.float().abs().max()
    assert err < 2e-3, f"joined features differ from encoding the joined video by {float(err):.2e} (relative)"
    assert meta["frames"] == 3 * n and len(meta["timestamps"]) == 3 * n


def test_join_features_errors():
    f = torch.zeros(8 + 4, 6)
    with pytest.raises(VtomError, match="temporal tokens"): join_features([f, f], [8, 8], [8, 8], num_frames=10)
    with pytest.raises(VtomError, match="shape"): join_features([f, torch.zeros(8 + 5, 6)], [8, 8], [8, 8])
    with pytest.raises(VtomError, match="one features tensor"): join_features([f], [8, 8], [8])


# --- label arithmetic, hand-computed; the reference's three defects as regression cases -------------------------------

DURS = [60.06, 45.0, 59.93]
TS = np.concatenate([np.arange(100) * d / 100 + o for d, o in zip(DURS, [0.0, 60.06, 105.06])])   # 100 frames a clip, first at 0 s


def test_offsets_are_clip_durations_not_the_last_window_end():
    # defect 3: the reference shifted clip 1 by the previous question's window end (ts '0.00-116.17' here), not by clip 0's duration
    off = clip_offsets(DURS)
    assert np.allclose(off, [0.0, 60.06, 105.06])
    assert shift_window((0.0, 116.17), off[1], DURS[1]) == pytest.approx((60.06, 105.06))   # ts longer than the video is clipped
    assert not np.isclose(off[1], 116.17)


def test_target_is_the_midpoint_not_half_the_length():
    # defect 1: clip 1's frames are 100..199; the midpoint is 149; the reference's (199 - 100) // 2 = 49 is a frame of clip 0
    first, last = window_frames((60.06, 105.06), TS)
    assert (first, last) == (100, 199)
    assert midpoint_index(first, last) == 149
    assert (last - first) // 2 == 49 and not first <= 49 <= last
    assert midpoint_index(0, 99) == 49 and midpoint_index(200, 299) == 249 and midpoint_index(7, 7) == 7
    # a partial window: ts 12.50-42.25 in clip 2 -> seconds 117.56-147.31 -> frames 221..270 (times 117.56.. < 147.31)
    w = shift_window((12.5, 42.25), 105.06, 59.93)
    f, l = window_frames(w, TS)
    assert (f, l) == (221, 270) and midpoint_index(f, l) == 245


def test_index_base_is_stated_in_prompt_and_parser():
    # defect 2: the reference's prompt asked for 1..100 while its targets were 0-based
    p1, p0 = index_prompt("Why?", 300, base=1), index_prompt("Why?", 300, base=0)
    assert "numbered from 1 to 300" in p1 and "numbered from 0 to 299" in p0
    assert format_index(149, base=1) == "150" and format_index(149, base=0) == "149"
    for base in (0, 1):
        assert all(parse_index(format_index(i, base), 300, base) == i for i in (0, 149, 299))
    assert parse_index("1", 300, base=1) == 0 and parse_index("0", 300, base=1) is None
    assert parse_index("300", 300, base=0) is None and parse_index("frame 12 or 13", 300) == 12 and parse_index("", 300) is None
    with pytest.raises(VtomError): index_prompt("Why?", 300, base=2)


def test_boundary_frame_belongs_to_the_next_clip():
    ts = [0.0, 2.0, 4.0, 6.0, 8.0]        # clip 0 is 6 s long; frame 3 (6.0 s) is clip 1's first frame
    assert window_frames((0.0, 6.0), ts) == (0, 2) and window_frames((6.0, 10.0), ts) == (3, 4)
    assert window_frames((4.5, 5.5), ts) == (2, 2)   # no frame inside: the nearest to the centre


# --- the build on the real Social-IQ 2.0 file format ----------------------------------------------------------------

def test_build_on_siq2_fixture(tmp_path):
    store = _fake_store(tmp_path / "f", {"vidA": (8, 8, 60.06), "vidB": (6, 8, 45.0), "vidC": (8, 8, 59.93)})
    s = build_tomloc(FIXTURE_QA, store, tmp_path / "tl", n_clips=3, seed=0, base=1)
    assert s["samples"] == 1 and s["questions"] == 8 and s["num_frames"] == 24 and s["videos_left_over"] == 0
    rows = load_tomloc(tmp_path / "tl" / "tomloc.jsonl")
    meta = FeatureStore(tmp_path / "tl" / "features").meta(rows[0]["vid"])
    assert meta["frames"] == 22 and meta["duration"] == pytest.approx(sum([60.06, 45.0, 59.93]))
    by_vid = {c["video_id"]: c for c in meta["clips"]}
    fixture = [json.loads(l) for l in FIXTURE_QA.read_text().splitlines()]
    for r in rows:
        c = by_vid[r["orig_video"]]
        src = next(q for q in fixture if q["qid"] == r["orig_qid"])
        s0, e0 = (float(x) for x in src["ts"].split("-"))
        assert r["relevant_windows"][0] == pytest.approx([c["offset"] + s0, c["offset"] + min(e0, c["duration"])], abs=1e-4)
        assert r["options"] == [src[f"a{i}"] for i in range(4)] and r["answer_idx"] == src["answer_idx"]   # own clip's options
        f, l = r["relevant_frames"]
        assert c["first_frame"] <= f <= r["target_frame"] <= l < c["first_frame"] + c["frames"] and r["index_base"] == 1
    # the LM-route records answer with the midpoint in the stated numbering; the MC file is Social-IQ 2.0 about the sample
    recs = json.loads((tmp_path / "tl" / "index_records.json").read_text())
    assert [rec["conversations"][1]["value"] for rec in recs] == [str(r["target_frame"] + 1) for r in rows]
    assert "numbered from 1 to 22" in recs[0]["conversations"][0]["value"]
    from vtom.data import load_siq2
    mc = load_siq2(tmp_path / "tl" / "qa_joined.json")
    assert [q.video_id for q in mc] == [r["vid"] for r in rows] and [q.answer_idx for q in mc] == [r["answer_idx"] for r in rows]
    # the spatial rows are the frame-weighted mean (vidB has 6 real frames of 8)
    joined = FeatureStore(tmp_path / "tl" / "features")[rows[0]["vid"]].float()
    src_store = FeatureStore(store)
    w = {v: by_vid[v]["frames"] for v in by_vid}
    want = sum(w[v] * src_store[v][8:].float() for v in w) / sum(w.values())
    assert torch.allclose(joined[24:], want, atol=2e-3)


def test_build_errors_name_the_fix(tmp_path):
    store = _fake_store(tmp_path / "f", {"vidA": (8, 8, 60.0), "vidB": (8, 8, 60.0)})
    with pytest.raises(VtomError, match="vtom features"): build_tomloc(FIXTURE_QA, store, tmp_path / "o", n_clips=3)
    save_features(store / "vidC.safetensors", torch.zeros(12, 6).half(), {"video_id": "vidC", "frames": 8, "num_frames": 8})
    with pytest.raises(VtomError, match="vidC.*duration.*re-extract"): build_tomloc(FIXTURE_QA, store, tmp_path / "o", n_clips=3)


def test_grouping_is_seeded_and_drops_the_remainder(tmp_path):
    vids = {f"v{i:02d}": (4, 4, 10.0 + i) for i in range(10)}
    store = _fake_store(tmp_path / "f", vids)
    qa = _siq2_lines(tmp_path / "qa.json", {v: 2 for v in vids})
    a = build_tomloc(qa, store, tmp_path / "a", n_clips=3, seed=0)
    b = build_tomloc(qa, store, tmp_path / "b", n_clips=3, seed=0)
    c = build_tomloc(qa, store, tmp_path / "c", n_clips=3, seed=1)
    assert a["samples"] == 3 and a["videos_left_over"] == 1 and a["questions"] == 18
    ra, rb, rc = (load_tomloc(tmp_path / x / "tomloc.jsonl") for x in "abc")
    assert [r["orig_qid"] for r in ra] == [r["orig_qid"] for r in rb] != [r["orig_qid"] for r in rc]


# --- scoring, the paired comparison, the mixed training set, the CLI -------------------------------------------------

def _two_builds(tmp_path):
    vids = {f"v{i:02d}": (4, 4, 5.0 + i % 4) for i in range(12)}
    store = _fake_store(tmp_path / "f", vids)
    qa_tr = _siq2_lines(tmp_path / "tr.json", {v: 3 for v in list(vids)[:9]})
    qa_te = _siq2_lines(tmp_path / "te.json", {v: 3 for v in list(vids)[9:]})
    build_tomloc(qa_tr, store, tmp_path / "train", n_clips=3)
    build_tomloc(qa_te, store, tmp_path / "test", n_clips=3)
    return store


def test_evaluate_with_priors_head_and_lm_route(tmp_path):
    _two_builds(tmp_path)
    rep = evaluate_tomloc(tmp_path / "train", tmp_path / "test", tmp_path / "eval", head_steps=5, llm="tiny", lm_steps=2, lm_batch=2)
    methods = [r["method"] for r in rep["table"]]
    assert methods == ["uniform", "train prior", "question-type prior", "retrieval head", "LM frame index"]
    for r in rep["table"]:
        assert r["n"] == 9 and 0 <= r["exact_index"] <= r["frame_in_window"] <= 1 and 0 <= r["mIoU"] <= 1
    lm = next(r for r in rep["table"] if r["method"] == "LM frame index")
    assert lm["answered"] == np.mean([a["frame"] is not None for a in rep["lm_answers"]])
    assert (tmp_path / "eval" / "report.md").read_text().count("| LM frame index |") == 1


def test_paired_accuracy_and_compare_cli(tmp_path, capsys):
    base = [{"qid": f"q{i}", "correct": i < 50} for i in range(100)]
    other = [{"qid": f"q{i}", "correct": i < 60} for i in range(100)] + [{"qid": "extra", "correct": True}]
    res = paired_accuracy(base, other)
    assert res["n"] == 100 and res["difference"] == pytest.approx(0.10) and res["only_other_correct"] == 10
    assert res["difference_ci95"][0] > 0       # 10 wins, no losses: the paired interval excludes 0
    for name, recs in (("a", base), ("b", other)):
        (tmp_path / f"{name}.predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert tomloc_main(["compare", str(tmp_path / "a.predictions.jsonl"), str(tmp_path / "b.predictions.jsonl"),
                        "--out", str(tmp_path / "cmp.json")]) == 0
    assert json.loads((tmp_path / "cmp.json").read_text())["difference"] == pytest.approx(0.10)
    with pytest.raises(VtomError): paired_accuracy(base, [{"qid": "zz", "correct": True}])


def test_mix_training_links_both_stores(tmp_path):
    store = _two_builds(tmp_path)
    qa = _siq2_lines(tmp_path / "mc.json", {"v00": 2, "v01": 2})
    with pytest.raises(VtomError, match="differ in shape"):   # 12 joined temporal rows against 4: not one model's input
        mix_training(qa, store, tmp_path / "train", tmp_path / "mix")
    small = _fake_store(tmp_path / "small", {f"w{i}": (1, 4, 3.0) for i in range(3)})     # clips of 1 frame -> 3 frames in 4 rows
    build_tomloc(_siq2_lines(tmp_path / "w.json", {f"w{i}": 1 for i in range(3)}), small, tmp_path / "tw", n_clips=3, num_frames=4)
    res = mix_training(qa, store, tmp_path / "tw", tmp_path / "mix")
    assert res == {"records": 7, "multiple_choice": 4, "tomloc": 3, "out": str(tmp_path / "mix")}
    from vtom.train import load_records, record_video_id
    recs = load_records(tmp_path / "mix" / "records.json")
    mixed = FeatureStore(tmp_path / "mix" / "features")
    assert all(record_video_id(r) in mixed for r in recs) and len({tuple(mixed[v].shape) for v in mixed.ids()}) == 1


def test_cli_build_and_eval(tmp_path, capsys):
    store = _fake_store(tmp_path / "f", {"vidA": (8, 8, 60.06), "vidB": (8, 8, 45.0), "vidC": (8, 8, 59.93)})
    assert tomloc_main(["build", "--qa", str(FIXTURE_QA), "--features", str(store), "--n-clips", "3", "--seed", "0",
                        "--out", str(tmp_path / "tl")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["questions"] == 8
    assert tomloc_main(["eval", "--train", str(tmp_path / "tl"), "--test", str(tmp_path / "tl"), "--out", str(tmp_path / "ev"),
                        "--head-steps", "3"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"uniform", "train prior", "question-type prior", "retrieval head"}
    from vtom.cli import main
    assert main(["tomloc", "build", "--qa", str(FIXTURE_QA), "--features", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "vtom features" in capsys.readouterr().err


# --- the paper's experiment as the gpu-tomloc preset -----------------------------------------------------------------

def test_gpu_tomloc_dry_run_offline(capsys):
    from vtom.cli import main
    fixtures = str(ROOT / "data" / "fixtures" / "siq2")
    # with the data and models present (fixture folder, embedded LM, random tower) nothing is missing
    assert main(["run", "gpu-tomloc", "--dry-run", "-p", "siq2_dir", fixtures, "-p", "llm", "embedded", "-p", "vision", "random:ViT-L-14"]) == 0
    assert "OK, ready to run" in capsys.readouterr().out
    # as shipped, offline: only "missing" problems (data and weights to download), never an error in the pipeline itself
    rc = main(["run", "gpu-tomloc", "--dry-run", "-p", "siq2_dir", "/nonexistent/siq2"])
    out = capsys.readouterr().out
    assert rc == 1 and "/nonexistent/siq2 does not exist" in out and "error" not in out and "how to fix" in out


def test_gpu_tomloc_commands_use_real_flags(capsys):
    "Every flag of every command stage is one the routed command accepts (checked against its --help)."
    import re
    from vtom.batch import PIPELINES
    from vtom.cli import main
    for stage in PIPELINES["tomloc"]:
        argv = list(stage.command[1:])
        sub = [a for a in argv[:2] if not a.startswith(("-", "{"))]
        if sub and sub[0] in ("eval",): sub = sub[:1]          # `vtom eval siq2 ...`: siq2 is a positional
        with pytest.raises(SystemExit) as e: main([*sub, "--help"])
        assert e.value.code == 0
        helptext = capsys.readouterr().out
        for flag in (a for a in argv if re.fullmatch(r"--[a-z][a-z0-9-]*", a)):
            assert flag in helptext, f"stage {stage.name}: `vtom {' '.join(sub)}` has no {flag}"
    names = [s.name for s in PIPELINES["tomloc"]]
    assert names.index("train-mc") < names.index("eval-mc") and names[-2:] == ["compare", "localise"]


def test_gpu_tomloc_chain_runs_on_stand_in_features(tmp_path, capsys):
    "The preset's commands after feature extraction, exactly as the pipeline spells them, on stand-in stores and a tiny LM."
    import re
    from vtom.batch import PIPELINES
    from vtom.cli import main
    siq2, work = tmp_path / "siq2", tmp_path / "work"
    (siq2 / "qa").mkdir(parents=True)
    vids = [f"v{i:02d}" for i in range(12)]
    _siq2_lines(siq2 / "qa" / "qa_train.json", {v: 2 for v in vids[:9]})
    _siq2_lines(siq2 / "qa" / "qa_val.json", {v: 2 for v in vids[9:]})
    _fake_store(work / "features", {v: (4, 4, 6.0) for v in vids})            # multiple choice: 4 temporal + 4 spatial rows
    _fake_store(work / "features-clips", {v: (1, 1, 6.0) for v in vids})      # clips of 1 frame, joined 3 -> 4 temporal rows
    params = {"siq2_dir": str(siq2), "work": str(work), "llm": "tiny", "device": "cpu", "n_clips": "3", "seed": "0",
              "num_frames": "4", "train_steps": "2", "head_steps": "3", "lm_steps": "1"}
    for stage in PIPELINES["tomloc"]:
        if stage.name.endswith("features"): continue
        argv = [re.sub(r"\{(\w+)\}", lambda m: params[m.group(1)], a) for a in stage.command[1:]]
        if argv[0] == "train": argv += ["--batch-size", "2", "--global-batch-size", "2", "--num-workers", "0"]   # CPU-sized batch
        assert main(argv) == 0, f"stage {stage.name} failed: {capsys.readouterr().err[-2000:]}"
    cmp = json.loads((work / "eval" / "compare.json").read_text())
    assert cmp["n"] == 6 and -1 <= cmp["difference"] <= 1 and len(cmp["difference_ci95"]) == 2
    mixed = json.loads((work / "mix" / "records.json").read_text())
    assert len(mixed) == 18 + 18 and (work / "tomloc-eval" / "report.json").is_file()
