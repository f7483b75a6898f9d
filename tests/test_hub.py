"""Hub-native checkpoints and data, offline: save / load by folder and by a cached repo id, the clear error for a repo id
that is not cached, the model card from real `vtom eval` runs, and `datasets.load_dataset` on a generated set."""
import json

import pytest
import torch
import yaml

from vtom.core import VtomError
from vtom.model import VideoLLM, VideoLLMConfig, load_llm


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    lm, tok = load_llm("tiny", device="cpu")
    cfg = VideoLLMConfig(lm_name="tiny", vision_name="thumbnail:14", vision_hidden_size=16, num_frames=4, num_spatial_tokens=2, projector_type="mlp2")
    model = VideoLLM(cfg, lm, tok)
    with torch.no_grad():
        for p in model.projector.parameters(): p.normal_(0, 0.1)
    folder = model.save_pretrained(tmp_path_factory.mktemp("ck") / "tiny")
    return model, folder


def _logits(model):
    batch = model.prepare_inputs(["What happens?"], torch.ones(1, 6, 16))
    with torch.no_grad(): return model(**batch).logits


def test_save_and_load_by_folder(tiny_ckpt):
    model, folder = tiny_ckpt
    assert {p.name for p in folder.iterdir()} == {"config.json", "processor_config.json", "projector.safetensors"}
    proc = json.loads((folder / "processor_config.json").read_text())
    assert proc["vision_tower"] == "thumbnail:14" and proc["num_frames"] == 4 and proc["num_video_tokens"] == 6 and "video-chatgpt" in proc["pooling"]
    again = VideoLLM.from_pretrained(folder, device="cpu")
    assert torch.allclose(_logits(model), _logits(again), atol=1e-5)


def test_load_by_cached_repo_id_offline(tiny_ckpt, tmp_path, monkeypatch):
    "A repo id found in the local Hub cache loads offline (the cache laid out as huggingface_hub lays it)."
    import shutil
    from huggingface_hub import constants
    model, folder = tiny_ckpt
    commit = "0" * 40
    snap = tmp_path / "models--vtom-tests--tiny" / "snapshots" / commit
    shutil.copytree(folder, snap)
    (tmp_path / "models--vtom-tests--tiny" / "refs").mkdir()
    (tmp_path / "models--vtom-tests--tiny" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = VideoLLM.from_pretrained("vtom-tests/tiny", device="cpu")
    assert torch.allclose(_logits(model), _logits(again), atol=1e-5)


def test_uncached_repo_id_offline_fails_with_one_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VtomError, match=r"vtom-tests/not-cached is neither a folder here nor a repo in the local Hugging Face cache.*HF_HUB_OFFLINE=1.*hf download vtom-tests/not-cached"):
        VideoLLM.from_pretrained("vtom-tests/not-cached", device="cpu")


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    from vtom.features import extract_to_store, load_vision_tower
    from vtom.synth import generate_dataset
    d = tmp_path_factory.mktemp("hub")
    generate_dataset(d / "S", num_videos=6, seed=0, size=64, splits={"train": 3, "test": 3}, progress=False, sheet=False)
    extract_to_store(sorted((d / "S" / "videos").glob("*.mp4")), d / "F", load_vision_tower("thumbnail:14", device="cpu"), num_frames=4, progress=False)
    return d


def test_card_from_real_eval_runs(tiny_ckpt, synth_set):
    "The card of a checkpoint scored by `vtom eval` in a model mode and a baseline: metrics with CIs, the paired difference, the data."
    from vtom.evaluate import eval_main
    from vtom.hub import model_card
    lm, tok = load_llm("tiny", device="cpu")
    from vtom.features import FeatureStore, feature_shape
    rows, dim = feature_shape(FeatureStore(synth_set / "F"))
    ck = VideoLLM(VideoLLMConfig(lm_name="tiny", vision_name="thumbnail:14", vision_hidden_size=dim, num_frames=4, num_spatial_tokens=rows - 4),
                  lm, tok).save_pretrained(synth_set / "ck")
    (ck / "train_metrics.json").write_text(json.dumps({"config": {"train_data": "S/qa_train.json", "global_batch_size": 4, "learning_rate": 1e-3, "seed": 0},
                                                       "train_records": 12, "global_step": 0, "eval_loss_before": None, "eval_loss_after": None}))
    evals = []
    for mode in ("video", "text", "longest-option"):
        out = synth_set / "ev" / f"{mode}.json"
        args = ["synth", "--qa", str(synth_set / "S" / "qa_test.json"), "--mode", mode, "--out", str(out), "--no-progress"]
        if mode != "longest-option": args += ["--checkpoint", str(ck), "--features", str(synth_set / "F"), "--llm", "tiny", "--device", "cpu"]
        assert eval_main(args) == 0
        evals.append(out)
    card = model_card(ck, evals, repo_id="vtom-tests/tiny")
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "vtom" and {r["metrics"][0]["name"] for r in meta["model-index"][0]["results"]} == {
        "accuracy (video)", "accuracy (text)", "accuracy (longest-option)"}
    video = json.loads(evals[0].read_text())
    assert f"| synth | video | model | letter | {video['n']} | {video['accuracy']:.3f} [{video['ci95'][0]:.3f}, {video['ci95'][1]:.3f}]" in card
    assert "| synth | video | text |" in card and "| synth | video | longest-option |" in card   # paired rows against both baselines
    assert "## What the weights can and cannot do" in card and "colour-thumbnail" in card and "`S/qa_train.json` (12 records" in card
    assert 'VideoLLM.from_pretrained(\'vtom-tests/tiny\')' in card


def test_load_dataset_on_a_generated_set(synth_set, tmp_path):
    "`vtom synth`'s card makes the folder a `datasets` dataset; `export_features` adds the features as a config."
    import datasets
    from vtom.hub import export_features
    S = synth_set / "S"
    qs = datasets.load_dataset(str(S), cache_dir=str(tmp_path / "c"))
    assert set(qs) == {"train", "test"} and {"qid", "q", "vid_name", "a0", "answer_idx", "evidence"} <= set(qs["test"].column_names)
    assert qs["test"].num_rows == sum(1 for _ in open(S / "qa_test.json"))
    moments = datasets.load_dataset(str(S), "moments", cache_dir=str(tmp_path / "c"))
    assert {"qid", "vid_name", "query", "window"} <= set(moments["train"].column_names)
    res = export_features(synth_set / "F", S)
    feats = datasets.load_dataset(str(S), res["config"], cache_dir=str(tmp_path / "c"))
    row = feats["test"][0]
    assert res["config"] == "features-thumbnail_14" and len(row["features"]) > 4
    from vtom.features import FeatureStore
    assert torch.allclose(torch.tensor(row["features"]), FeatureStore(synth_set / "F")[row["video_id"]].float(), atol=1e-6)
    assert row["frames"] == 4 and len(row["timestamps"]) == 4
