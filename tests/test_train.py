"""Training: label masking, collation, checkpoints that load, resume, LoRA, the CLI, and DDP on CPU with 2 processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vtom.core import VtomError
from vtom.model import IGNORE_INDEX, VideoLLM, load_llm
from vtom.train import (ConversationDataset, StopAtStep, TrainConfig, TrainDataError, VideoCollator, load_records, train,
                        train_main)

T, P, D = 8, 4, 32


def make_data(folder: Path, n: int = 6, seed: int = 0) -> tuple[Path, Path]:
    "Random pooled features for n videos and one conversation per video (+ a text-only one)."
    feats = folder / "features"
    feats.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    records = []
    for i in range(n):
        save_file({"features": torch.randn(T + P, D, generator=g).half()}, str(feats / f"v{i}.safetensors"),
                  metadata={"vtom": json.dumps({"num_frames": T})})
        q = "<video>\nWhat does the girl think?" if i % 2 else "Where is the ball?\n<video>"
        records.append({"id": f"r{i}", "video": f"v{i}.pkl", "conversations": [{"from": "human", "value": q},
                                                                              {"from": "gpt", "value": f"Answer number {i}."}]})
    data = folder / "train.json"
    data.write_text(json.dumps(records))
    return data, feats


@pytest.fixture(scope="module")
def tiny():
    return load_llm("tiny", device="cpu")


def base_config(tmp: Path, **kw) -> TrainConfig:
    data, feats = make_data(tmp)
    args = dict(train_data=str(data), features=str(feats), llm="tiny", device="cpu", max_steps=4, batch_size=2,
                global_batch_size=2, learning_rate=1e-2, save_steps=2, logging_steps=1, eval_before=False)
    args.update(kw)
    return TrainConfig(**args)


def answer_spans(item) -> list[list[int]]:
    spans, cur = [], []
    for tid, lab in zip(item["input_ids"].tolist(), item["labels"].tolist()):
        if lab != IGNORE_INDEX:
            assert lab == tid
            cur.append(lab)
        elif cur:
            spans.append(cur); cur = []
    return spans + ([cur] if cur else [])


@pytest.mark.parametrize("template", ["chat", "vicuna_v1_1"])
def test_unmasked_labels_are_exactly_the_answers(tmp_path, tiny, template):
    _, tok = tiny
    data, feats = make_data(tmp_path)
    records = load_records(data)
    records.append({"id": "multi", "video": "v0.pkl", "conversations": [
        {"from": "human", "value": "<video>\nWho?"}, {"from": "gpt", "value": "Anne."},
        {"from": "human", "value": "Why?"}, {"from": "gpt", "value": "Because she saw it."}]})
    ds = ConversationDataset(records, feats, tok, template, T + P, 512)
    for i, r in enumerate(ds.records):
        want = [t["value"] + tok.eos_token for t in r["conversations"] if t["from"] == "gpt"]
        # a BPE token may carry the space after "ASSISTANT:" (sep templates): it belongs to the answer's first token
        assert [tok.decode(s).lstrip(" ") for s in answer_spans(ds[i])] == want


def test_collator_pads_and_stacks_any_batch_size(tmp_path, tiny):
    _, tok = tiny
    data, feats = make_data(tmp_path)
    records = load_records(data) + [{"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello there, friend."}]}]
    ds = ConversationDataset(records, feats, tok, "chat", T + P, 512)
    for side in ("left", "right"):
        for bs in (1, 3, 7):
            items = [ds[i] for i in range(bs - 1)] + [ds[len(ds) - 1]] if bs > 1 else [ds[0]]  # last: text-only
            batch = VideoCollator(tok, padding_side=side)(items)
            assert batch["input_ids"].shape[0] == bs and batch["video_features"].shape == (bs, T + P, D)
            for row, it in zip(range(bs), items):  # the tokens survive padding, on the requested side
                n = len(it["input_ids"])
                got = batch["input_ids"][row, :n] if side == "right" else batch["input_ids"][row, -n:]
                assert torch.equal(got, it["input_ids"])
            assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
            if bs == 7: assert batch["has_video"].tolist() == [True] * 6 + [False]


def test_records_without_features_are_dropped_and_missing_everything_is_an_error(tmp_path, tiny):
    _, tok = tiny
    data, feats = make_data(tmp_path)
    recs = load_records(data) + [{"id": "x", "video": "nope.pkl", "conversations": [{"from": "human", "value": "<video>"}, {"from": "gpt", "value": "a"}]}]
    assert ConversationDataset(recs, feats, tok, "chat", T + P, 512).dropped == 1
    with pytest.raises(TrainDataError, match="none of the"):
        ConversationDataset(recs[-1:], feats, tok, "chat", T + P, 512)
    with pytest.raises(TrainDataError, match="shape"):
        ConversationDataset(recs[:1], feats, tok, "chat", T + P + 1, 512)[0]


def test_every_checkpoint_and_the_output_load_with_from_pretrained(tmp_path):
    out = train(base_config(tmp_path, output_dir=str(tmp_path / "run")))
    ckpts = sorted(out.glob("checkpoint-*"))
    assert [p.name for p in ckpts] == ["checkpoint-2", "checkpoint-4"]
    for ck in ckpts:
        assert {"config.json", "projector.safetensors", "optimizer.pt", "trainer_state.json"} <= {p.name for p in ck.iterdir()}
        assert not any(p.stat().st_size > 5e6 for p in ck.iterdir()), "the frozen LM must not be saved"
    models = [VideoLLM.from_pretrained(p, device="cpu") for p in [*ckpts, out]]
    assert torch.equal(models[-1].projector.weight, models[-2].projector.weight)
    assert not torch.equal(models[0].projector.weight, models[1].projector.weight)
    assert (out / "loss.csv").is_file() and json.loads((out / "train_metrics.json").read_text())["global_step"] == 4


def test_resume_continues_exactly(tmp_path):
    cfg = base_config(tmp_path)
    full = train(cfg, output_dir=str(tmp_path / "full"))
    part = train(cfg, output_dir=str(tmp_path / "part"), callbacks=[StopAtStep(2)])
    assert json.loads((part / "train_metrics.json").read_text())["global_step"] == 2
    resumed = train(cfg, output_dir=str(tmp_path / "part"))
    m = json.loads((resumed / "train_metrics.json").read_text())
    assert m["resumed_from"].endswith("checkpoint-2") and m["global_step"] == 4
    a = VideoLLM.from_pretrained(full, device="cpu")
    b = VideoLLM.from_pretrained(resumed, device="cpu")
    assert torch.allclose(a.projector.weight, b.projector.weight, atol=1e-6)
    assert torch.allclose(a.video_embeddings, b.video_embeddings, atol=1e-6)


def test_lora_adapters_are_saved_resumed_and_loaded(tmp_path):
    cfg = base_config(tmp_path, lora=True, lora_r=4, max_steps=2, save_steps=1, learning_rate=5e-2)
    out = train(cfg, output_dir=str(tmp_path / "lora"))
    assert (out / "lora" / "adapter_model.safetensors").is_file() and (out / "checkpoint-1" / "lora").is_dir()
    m = VideoLLM.from_pretrained(out, device="cpu")
    lora = {n: p for n, p in m.lm.named_parameters() if "lora_B" in n}
    assert lora and any(p.abs().sum() > 0 for p in lora.values())  # lora_B starts at zero: it trained and was loaded
    with pytest.raises(VtomError, match="--lora"):
        train(cfg, lora=False, output_dir=str(tmp_path / "lora"), max_steps=3)


def test_train_main_flags_and_errors(tmp_path, capsys):
    data, feats = make_data(tmp_path)
    assert train_main([str(data), "--features", str(feats), "--llm", "tiny", "--device", "cpu", "-o", str(tmp_path / "cli"),
                       "--max-steps", "1", "--batch-size", "2", "--global-batch-size", "2", "--no-eval-before"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["global_step"] == 1
    from vtom.cli import main
    assert main(["train", str(data), "--features", str(tmp_path / "missing"), "--llm", "tiny", "--device", "cpu"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_ddp_two_processes_on_cpu(tmp_path):
    "torchrun --nproc_per_node 2 (gloo): data sharded over 2 ranks, one output folder that loads."
    data, feats = make_data(tmp_path, n=8)
    script = tmp_path / "run.py"
    script.write_text("import sys\nfrom vtom.train import train_main\nsys.exit(train_main(sys.argv[1:]))\n")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(data),
           "--features", str(feats), "--llm", "tiny", "--device", "cpu", "-o", str(out), "--max-steps", "2",
           "--batch-size", "2", "--global-batch-size", "4", "--save-steps", "2", "--no-eval-before"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out / "train_metrics.json").read_text())
    assert m["world_size"] == 2 and m["gradient_accumulation_steps"] == 1 and m["global_step"] == 2
    assert m["train"]["epoch"] == pytest.approx(1.0)  # 2 steps x 2 ranks x 2 samples = the 8 records once
    VideoLLM.from_pretrained(out / "checkpoint-2", device="cpu")


def test_training_arguments_come_from_one_table(tmp_path):
    "Every TrainConfig field the Trainer reads is in HF_FIELDS under the Trainer's name; the config's values arrive unchanged."
    import dataclasses
    from transformers import TrainingArguments
    from vtom.train import HF_FIELDS, TrainConfig, resolve_config, training_arguments
    hf = {f.name for f in dataclasses.fields(TrainingArguments)}
    ours = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(HF_FIELDS) <= ours and all(set(v) <= hf for v in HF_FIELDS.values())
    assert (ours & hf) - set(HF_FIELDS) == {"gradient_checkpointing"}, "a new TrainConfig field named like a Trainer argument: map it"
    cfg, derived = resolve_config({"train_data": "a.json", "device": "cpu", "output_dir": str(tmp_path), "learning_rate": 0.25,
                                   "epochs": 2.0, "batch_size": 3, "global_batch_size": 6, "warmup_ratio": 0.1, "lr_scheduler": "linear",
                                   "save_total_limit": 1, "num_workers": 0, "seed": 7, "max_steps": 9})
    args = training_arguments(cfg, derived)
    for name, targets in HF_FIELDS.items():
        for t in targets: assert getattr(args, t) == getattr(cfg, name), (name, t)
    assert args.gradient_accumulation_steps == 2 and args.eval_strategy == "no" and args.warmup_steps == 0.1


def _timelines(folder: Path, video_ids, expression: str = "happy") -> Path:
    "Hand-written timelines (vtom.social's record shape): one face, neutral for 4 frames, then `expression`."
    from vtom.core import write_json
    from vtom.social import EXPRESSIONS, timeline_path
    def face(e): return [{"box": [0, 0, 8, 8], "track": 0, "expression": {x: float(x == e) for x in EXPRESSIONS}}]
    for v in video_ids:
        write_json(timeline_path(folder, v), {"video_id": v, "duration": 4.0, "frames": [
            {"t": i / 2, "faces": face(expression if i >= 4 else "neutral"), "voice": 0.0, "speaker": None} for i in range(T)]})
    return folder


def test_social_tokens_train_step_checkpoint_and_missing_timeline(tmp_path, capsys):
    "vtom train --social-store: the social projector trains from zero with the video projector, is saved and reloads; a missing timeline stops the run naming the video and the command."
    from vtom.social import SOCIAL_DIM
    data, feats = make_data(tmp_path)
    social = _timelines(tmp_path / "social", [f"v{i}" for i in range(6)])
    args = [str(data), "--features", str(feats), "--llm", "tiny", "--device", "cpu", "--max-steps", "2", "--batch-size", "2",
            "--global-batch-size", "2", "--learning-rate", "1e-2", "--no-eval-before", "--social-store", str(social)]
    assert train_main(args + ["-o", str(tmp_path / "run")]) == 0
    model = VideoLLM.from_pretrained(tmp_path / "run", device="cpu")
    assert model.config.social_dim == SOCIAL_DIM and model.social_projector.mlp[2].weight.abs().sum() > 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["social_dim"] == SOCIAL_DIM
    plain = base_config(tmp_path, max_steps=1, output_dir=str(tmp_path / "plain"))
    assert VideoLLM.from_pretrained(train(plain), device="cpu").social_projector is None   # off by default
    (social / "v3.social.json").unlink()
    with pytest.raises(TrainDataError, match=r"'v3'.*vtom social VIDEO --store"):
        train_main(args + ["-o", str(tmp_path / "run2")])
    with pytest.raises(VtomError, match="no such folder of timelines"):
        train_main(args[:-1] + [str(tmp_path / "nowhere"), "-o", str(tmp_path / "run3")])
