"""One resolved spec, one builder (issue 28): `vtom.model.resolve_spec` takes each value from the first source that gives
it (explicit > checkpoint > store > tower > defaults), `build_video_llm` makes the same models the commands made by hand
before, and `num_frames` from `vtom eval`'s command line is decided once and never travels back into a module it left."""
import json
import sys
from pathlib import Path

import pytest
import torch

from vtom.core import REFERENCE_NUM_FRAMES
from vtom.features import FeatureStore, save_features
from vtom.model import (SPEC_FIELDS, SpecError, VideoLLM, VideoLLMConfig, build_video_llm, load_llm, resolve_spec,
                        spec_defaults)
from vtom.registry import OFFLINE_TOWER, REFERENCE_TOWER, STUDY_TOWER, TEST_TOWER

SIQ2 = Path(__file__).resolve().parents[1] / "data/fixtures/siq2"
T, P, D = 4, 3, 12
CKPT_TOWER = "thumbnail:2"   # 2 x 2 colour cells: 12 wide, like the features here


def make_store(folder: Path, ids, frames: int = T, width: int = D, tower: str | None = TEST_TOWER) -> FeatureStore:
    g = torch.Generator().manual_seed(0)
    for vid in ids:
        meta = {"video_id": vid, "num_frames": frames} | ({"tower": tower} if tower else {})
        save_features(folder / f"{vid}.safetensors", torch.randn(frames + P, width, generator=g).half(), meta)
    return FeatureStore(folder)


@pytest.fixture(scope="module")
def tiny():
    return load_llm("tiny", device="cpu")


@pytest.fixture(scope="module")
def ckpt(tiny, tmp_path_factory):
    "A tiny checkpoint: 6 frames, 5 spatial tokens, 12 wide, the vicuna template."
    cfg = VideoLLMConfig(lm_name="tiny", vision_name=CKPT_TOWER, vision_hidden_size=D, num_frames=6, num_spatial_tokens=5,
                         template="vicuna_v1_1")
    return VideoLLM(cfg, *tiny).save_pretrained(tmp_path_factory.mktemp("ckpt") / "ckpt")


class Tower:
    "What resolve_spec reads of a vision tower."
    def __init__(self, name: str, width: int = D, patches: int = P): self.name, self.hidden_size, self.num_patches = name, width, patches


def test_each_source_in_its_order(tmp_path, ckpt):
    store = make_store(tmp_path / "s", ["a"])
    default = resolve_spec()
    assert {k: getattr(default, k) for k in SPEC_FIELDS} == spec_defaults() and set(default.sources.values()) == {"default"}
    assert default.num_frames == REFERENCE_NUM_FRAMES and default.vision == REFERENCE_TOWER and resolve_spec(purpose="chat").vision == OFFLINE_TOWER
    s = resolve_spec(store=store)
    assert (s.vision, s.num_frames, s.num_spatial_tokens, s.vision_hidden_size) == (TEST_TOWER, T, P, D)
    assert [s.sources[k] for k in ("vision", "num_frames", "num_spatial_tokens", "vision_hidden_size", "llm")] == ["store"] * 4 + ["default"]
    t = resolve_spec(tower=Tower("thumbnail:2", 12, 4))
    assert (t.vision, t.vision_hidden_size, t.num_spatial_tokens, t.sources["vision"]) == ("thumbnail:2", 12, 4, "tower")
    c = resolve_spec(ckpt)   # the checkpoint beats the defaults
    assert (c.llm, c.vision, c.num_frames, c.template, c.sources["template"]) == ("tiny", CKPT_TOWER, 6, "vicuna_v1_1", "checkpoint")
    e = resolve_spec(ckpt, llm="embedded", template="chat", num_frames=None)   # explicit beats the checkpoint; None is "not given"
    assert (e.llm, e.template, e.num_frames) == ("embedded", "chat", 6) and e.sources["llm"] == e.sources["template"] == "explicit"
    both = resolve_spec(store=make_store(tmp_path / "s6", ["a"], frames=6), tower=Tower("x", D, 9), vision=STUDY_TOWER)
    assert both.num_spatial_tokens == P and both.sources["num_spatial_tokens"] == "store" and both.sources["vision"] == "explicit"


def test_one_clear_error_names_the_source(tmp_path, ckpt):
    store = make_store(tmp_path / "s", ["a"])
    with pytest.raises(SpecError, match=r"extracted with num_frames=4, but num_frames=9 comes from the explicit value \(--num-frames\)"):
        resolve_spec(store=store, num_frames=9)
    with pytest.raises(SpecError, match="num_frames=6 comes from the checkpoint value"):
        resolve_spec(ckpt, store)   # a checkpoint trained on 6 frames, features of 4
    assert resolve_spec(ckpt, store, num_frames=4).num_frames == 4   # a linear projector reads any count: say which
    save_features(tmp_path / "old" / "a.safetensors", torch.zeros(2 + P, D).half(), {"video_id": "a"})   # no frame count recorded
    with pytest.raises(SpecError, match="5 rows, not more than num_frames=100"):
        resolve_spec(store=FeatureStore(tmp_path / "old"))
    with pytest.raises(SpecError, match="8-wide features but the checkpoint"):
        resolve_spec(ckpt, tower=Tower("t", 8))


def test_builder_matches_what_infer_made(tiny, ckpt):
    from vtom.infer import VideoChat
    chat = VideoChat.from_names(llm="tiny", vision=STUDY_TOWER, num_frames=5, device="cpu", disk_cache=False)
    tower = chat.tower
    before = VideoLLMConfig(lm_name="tiny", vision_name=STUDY_TOWER, vision_hidden_size=tower.hidden_size, num_frames=5,
                            num_spatial_tokens=tower.num_patches)   # infer.py's own construction before the builder
    assert chat.model.config == before and chat.num_frames == 5 and chat.sources["num_spatial_tokens"] == "tower"
    loaded = VideoChat.from_names(checkpoint=ckpt, device="cpu", disk_cache=False)
    assert loaded.model.config == VideoLLM.from_pretrained(ckpt, *tiny).config and loaded.num_frames == 6
    assert loaded.tower.name == CKPT_TOWER and loaded.describe()["sources"]["vision"] == "checkpoint"


def test_builder_matches_what_eval_made(tmp_path, ckpt):
    from vtom.evaluate import load_eval_setup
    store = make_store(tmp_path / "s", ["a"])
    setup = load_eval_setup("tiny", "video", features=store.folder, device="cpu", num_frames=T)
    before = VideoLLMConfig(lm_name="tiny", vision_name="unknown", vision_hidden_size=D, num_frames=T, num_spatial_tokens=P, template="chat")
    assert setup.model.config == VideoLLMConfig(**{**before.to_dict(), "vision_name": TEST_TOWER})   # the store's tower, no longer "unknown"
    assert setup.num_frames == T and setup.info["spec_sources"]["num_frames"] == "explicit"
    assert load_eval_setup("tiny", "video", features=store.folder, device="cpu").num_frames == T   # now the store's, not 100 and an error
    text = load_eval_setup(None, "video", ckpt, store.folder, device="cpu", num_frames=T)
    assert text.model.config == VideoLLM.from_pretrained(ckpt, device="cpu").config and text.template == "vicuna_v1_1"
    assert text.info["llm"] == "tiny"   # the checkpoint's LM when --llm is not given


def test_builder_matches_what_train_made(tmp_path):
    from vtom.train import TrainConfig, build_model, train_spec
    store = make_store(tmp_path / "s", ["v0", "v1"], frames=T)
    cfg = TrainConfig(train_data="x", features=str(store.folder), llm="tiny", device="cpu", projector_type="temporal", template="vicuna_v1_1")
    model = build_model(cfg, train_spec(cfg, store, [{"video": "v1.mp4"}, {"video": "v0.mp4"}]))
    assert model.config == VideoLLMConfig(lm_name="tiny", vision_name=TEST_TOWER, vision_hidden_size=D, num_frames=T, num_spatial_tokens=P,
                                          projector_type="temporal", template="vicuna_v1_1")
    again = build_model(cfg, train_spec(cfg, store, [{"video": "v1.mp4"}]))   # the run's seed fixes the projector's initialisation
    assert all(torch.equal(a, b) for a, b in zip(model.projector.state_dict().values(), again.projector.state_dict().values()))


def test_reference_model_config(tmp_path):
    from vtom.model import VideoLLM as V
    lm, tok = load_llm("tiny", device="cpu")
    weights = tmp_path / "video_chatgpt-7B.bin"
    torch.save({"model.mm_projector.weight": torch.zeros(lm.config.hidden_size, 1024), "model.mm_projector.bias": torch.zeros(lm.config.hidden_size)}, weights)
    model = V.from_video_chatgpt(weights, lm_name="tiny", device="cpu")
    assert model.config == VideoLLMConfig(lm_name="tiny", vision_name=REFERENCE_TOWER, vision_hidden_size=1024, num_frames=REFERENCE_NUM_FRAMES,
                                          num_spatial_tokens=256, projector_type="linear", template="video-chatgpt_v1")


def trace_num_frames(fn):
    """Run `fn` under `sys.settrace` and record every call of a vtom function that holds `num_frames` (an argument, or a
    `spec`'s, None when not given): (module, function, value, the chain of vtom modules on the stack with repeats collapsed)."""
    seen, stack = [], []
    def tracer(frame, event, arg):
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("vtom."): return None
        stack.append(module.split(".")[1])
        names = frame.f_locals
        if "num_frames" in names or "spec" in names or frame.f_code.co_name == "resolve_spec":
            value = names["num_frames"] if "num_frames" in names else getattr(names.get("spec"), "num_frames", None)
            chain = [m for i, m in enumerate(stack) if i == 0 or stack[i - 1] != m]
            seen.append((stack[-1], frame.f_code.co_name, value, chain))
        def local(frame, event, arg):
            if event == "return": stack.pop()
            return local
        return local
    sys.settrace(tracer)
    try: fn()
    finally: sys.settrace(None)
    return seen


def test_num_frames_from_the_eval_command_is_decided_once(tmp_path):
    """Trace `vtom eval ... --num-frames 4` (video mode, tiny LM): resolve_spec runs once; every vtom function that holds a
    frame count afterwards holds that value; on no call chain does it go back into a module it left (cli -> evaluate ->
    model, never evaluate -> model -> evaluate)."""
    from vtom.cli import main
    from vtom.data import load_siq2
    vid = load_siq2(SIQ2 / "qa/qa_val.json")[0].video_id
    store = make_store(tmp_path / "s", [vid])
    args = ["eval", "siq2", "--qa", str(SIQ2 / "qa/qa_val.json"), "--mode", "video", "--llm", "tiny", "--device", "cpu",
            "--features", str(store.folder), "--num-frames", str(T), "--no-progress", "--out", str(tmp_path / "m.json")]
    seen = trace_num_frames(lambda: main(args))
    assert json.loads((tmp_path / "m.json").read_text())["n"] > 0
    resolved = [i for i, (m, f, _, _) in enumerate(seen) if f == "resolve_spec"]
    assert len(resolved) == 1 and seen[resolved[0]][0] == "model"
    after = {(m, f, v) for m, f, v, _ in seen[resolved[0] + 1:]}
    assert {v for _, _, v in after} == {T}, after
    assert {"transform_features", "build_projector"} <= {f for _, f, _ in after}   # it reached the scoring and the model
    for m, f, v, chain in seen:
        assert len(chain) == len(set(chain)), f"{m}.{f} got num_frames={v} through {' -> '.join(chain)}: back into a module it left"
