"""lmms-eval end to end: vtom's model on vtom's synthetic task scores what `vtom eval` scores, question by question, and a
plain lmms-eval model (its `dummy`, which decodes the videos and answers "A") runs vtom's task offline."""
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vtom.core import has_package

pytestmark = pytest.mark.skipif(not has_package("lmms_eval"), reason="lmms-eval is not installed: pip install -e '.[lmms]' (`make install` does)")


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    "A small synthetic set, its features (thumbnail tower, 8 frames) and the task pack written from it."
    from vtom.features import extract_to_store, load_vision_tower
    from vtom.lmms import write_task_pack
    from vtom.synth import generate_dataset
    d = tmp_path_factory.mktemp("lmms")
    generate_dataset(d / "S", num_videos=6, seed=0, size=64, splits={"test": 6}, progress=False, sheet=False)
    extract_to_store(sorted((d / "S" / "videos").glob("*.mp4")), d / "F", load_vision_tower("thumbnail:14", device="cpu"), num_frames=8, progress=False)
    write_task_pack(d / "T", synth=d / "S")
    return d


def _lmms_eval(d: Path, out: str, *args: str) -> tuple[dict, list[dict]]:
    "Run the lmms-eval command line; return its results and its logged samples."
    cmd = [sys.executable, "-m", "lmms_eval", *args, "--include_path", str(d / "T"), "--output_path", str(d / out), "--batch_size", "1", "--log_samples"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(Path(glob.glob(str(d / out / "*results.json"))[0]).read_text())
    samples = [json.loads(l) for f in glob.glob(str(d / out / "*samples_*.jsonl")) for l in Path(f).read_text().splitlines()]
    return results, samples


def test_entry_point_registers_vtom():
    from lmms_eval.models import get_model
    from vtom.lmms import VtomLMM
    assert get_model("vtom") is VtomLMM


def test_vtom_model_in_lmms_eval_scores_like_vtom_eval(pack):
    from vtom.evaluate import eval_main
    res, samples = _lmms_eval(pack, "O", "--model", "vtom", "--model_args", f"llm=tiny,features={pack / 'F'},num_frames=8,device=cpu",
                              "--tasks", "vtom_synth")
    assert eval_main(["synth", "--qa", str(pack / "S" / "qa_test.json"), "--features", str(pack / "F"), "--llm", "tiny", "--mode", "video",
                      "--num-frames", "8", "--device", "cpu", "--no-progress", "--out", str(pack / "ev" / "video.json")]) == 0
    ours = json.loads((pack / "ev" / "video.json").read_text())
    docs = [json.loads(l) for l in (pack / "T" / "data" / "vtom_synth.jsonl").read_text().splitlines()]
    preds = {json.loads(l)["qid"]: json.loads(l) for l in (pack / "ev" / "video.predictions.jsonl").read_text().splitlines()}
    assert len(samples) == ours["n"] == len(docs) > 0
    assert res["results"]["vtom_synth"]["acc,none"] == pytest.approx(ours["accuracy"])
    assert all(bool(s["acc"]) == preds[docs[s["doc_id"]]["qid"]]["correct"] for s in samples)   # question by question


def test_plain_lmms_eval_model_on_vtom_task(pack):
    "lmms-eval's `dummy` model reads every video (decoding 2 frames) and answers 'A': its accuracy is the share of A answers."
    res, samples = _lmms_eval(pack, "O2", "--model", "dummy", "--model_args", "decode_num_frames=2", "--tasks", "vtom_synth_gen")
    docs = [json.loads(l) for l in (pack / "T" / "data" / "vtom_synth.jsonl").read_text().splitlines()]
    assert len(samples) == len(docs)
    assert res["results"]["vtom_synth_gen"]["accuracy,none"] == pytest.approx(sum(d["answer_idx"] == 0 for d in docs) / len(docs))
    assert res["results"]["vtom_synth_gen"]["answered,none"] == 1.0


def test_tomloc_task_docs_and_joined_videos(pack):
    "A ToMLoc build becomes `vtom_tomloc` documents (clips in order, window); vtom's model joins the clips' features and answers."
    from lmms_eval.api.instance import Instance
    from vtom.lmms import VtomLMM, doc_to_visual, tomloc_doc_to_text, tomloc_process_results, write_task_pack
    from vtom.tomloc import build_tomloc
    build_tomloc(pack / "S" / "qa_test.json", pack / "F", pack / "B", n_clips=3, seed=0)
    res = write_task_pack(pack / "T3", tomloc=pack / "B", tomloc_videos=pack / "S" / "videos")
    docs = [json.loads(l) for l in (pack / "T3" / "data" / "vtom_tomloc.jsonl").read_text().splitlines()]
    assert res["tasks"] == {"vtom_tomloc": len(docs)} and len(docs[0]["videos"]) == 3 and sorted(p.name for p in (pack / "T3").glob("*.yaml")) == ["vtom_tomloc.yaml"]
    d = docs[0]
    assert d["relevant_windows"][0][1] <= d["duration"] + 1e-6 and abs(sum(d["durations"]) - d["duration"]) < 1e-3
    m = VtomLMM(llm="tiny", features=str(pack / "F"), num_frames=24)
    from vtom.features import FeatureStore
    rows = FeatureStore(pack / "F")[Path(d["videos"][0]).stem].shape[0]
    assert m.video_features(doc_to_visual(d)).shape[0] - 24 == rows - 8   # 3 clips x 8 temporal rows joined, the spatial rows re-pooled
    m.task_dict = {"vtom_tomloc": {"test": docs}}
    req = Instance("generate_until", (tomloc_doc_to_text(d), {"max_new_tokens": 4}, doc_to_visual, 0, "vtom_tomloc", "test"), 0,
                   {"task": "vtom_tomloc", "doc_id": 0, "repeats": 1})
    out = m.generate_until([req])
    assert set(tomloc_process_results(d, out)) == {"time_in_window", "answered"}
