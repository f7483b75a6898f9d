"""The whole model (perception + tracker + projectors + LoRA) and the study of its routes: checkpoint round trip, each route's shapes,
a tiny end to end train -> chat (the `vtom mind --dry-run` of the tom-mind preset), and the chat on held-out clips of a real run."""
import contextlib
import dataclasses
import io
import json
import os
from pathlib import Path

import pytest
import torch


def _whole(route: str, **kw):
    from vtom.model import OBSERVATION_COLUMNS, VideoLLM, VideoLLMConfig, load_llm
    lm, tok = load_llm("tiny", device="cpu")
    cfg = VideoLLMConfig(lm_name="tiny", vision_name="perception:frame", vision_hidden_size=len(OBSERVATION_COLUMNS), num_frames=6,
                         num_spatial_tokens=1, perception="frame", perception_size=64, container_colours=["none", "red", "blue"],
                         container_kinds=["none", "box"], tracker="graph", tracker_width=32, mind_route=route, **kw)
    return VideoLLM(cfg, lm, tok)


@pytest.mark.parametrize("route", ["none", "text", "tokens"])
def test_whole_model_round_trip_and_shapes(tmp_path, route):
    "Every route: perception -> features [T+1, D], tracker states [1, T, MIND_STATE_DIM], a forward pass, and a checkpoint that restores every part."
    from vtom.model import MIND_STATE_DIM, VideoLLM
    torch.manual_seed(0)
    m = _whole(route)
    feats, names = m.perceive(torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8))
    assert feats.shape == (7, m.config.vision_hidden_size) and m.mind.states(feats[None]).shape == (1, 6, MIND_STATE_DIM)
    meta = {"timestamps": [0.0, 0.5, 1.0, 1.5], "containers": names}
    notes = m.mind_text(feats, meta)
    assert notes.startswith("Mind timeline.") if route == "text" else notes.startswith("Container")
    if m.mind_projector is not None: torch.nn.init.normal_(m.mind_projector.mlp[2].weight)   # a trained mind projector
    batch = m.prepare_inputs(["<video>\nWhere will A look?"], feats[None])
    with torch.no_grad(): logits = m(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape
    again = VideoLLM.from_pretrained(m.save_pretrained(tmp_path / route), lm=m.lm, tokenizer=m.tokenizer)
    assert again.config == m.config and again.config.parts[:2] == ["perception (frame)", "tracker (graph)"]
    with torch.no_grad(): assert torch.equal(again(**batch).logits, logits)
    assert torch.equal(again.perceive(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))[0], m.perceive(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))[0])


def test_old_checkpoint_still_loads(tmp_path):
    "A checkpoint written before the whole model (no mind fields, no mind.safetensors) loads as the model it was."
    from vtom.model import MIND_FIELDS, VideoLLM, VideoLLMConfig, load_llm
    lm, tok = load_llm("tiny", device="cpu")
    ck = VideoLLM(VideoLLMConfig(lm_name="tiny", vision_hidden_size=16, num_frames=4, num_spatial_tokens=2), lm, tok).save_pretrained(tmp_path / "old")
    cfg = {k: v for k, v in json.loads((ck / "config.json").read_text()).items() if k not in (*MIND_FIELDS, "mind_route", "parts")}
    (ck / "config.json").write_text(json.dumps(cfg))
    m = VideoLLM.from_pretrained(ck, lm=lm, tokenizer=tok)
    assert m.perception is None and m.mind is None and m.mind_projector is None and m.config.parts == ["projector (linear)"]
    bad = dataclasses.replace(m.config, perception="frame", tracker="graph", vision_hidden_size=16)
    with pytest.raises(Exception, match="mind.safetensors"): VideoLLM(bad, lm, tok).load_weights(ck)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    from vtom.study_mind import mind_main
    out = tmp_path_factory.mktemp("mind")
    assert mind_main(["--dry-run", "--out", str(out), "--arms", "text + LoRA,tokens + LoRA"]) == 0
    return out, json.loads((out / "report.json").read_text())


def test_mind_study_dry_run(dry_run):
    "`vtom mind --dry-run` (the tom-mind preset's offline check): every arm x mode, heuristics, the tracker alone, goals, letter counts, chat."
    out, rep = dry_run
    rows = {(r["split"], r["arm"], r["mode"]) for r in rep["table"]}
    labels = [f"{arm} · {rule}" for arm in rep["arms"] for rule in rep["rules"]]   # every arm read with every scoring rule
    assert rep["rules"] == ["letter", "cloze"] and set(rep["val belief accuracy"]) == set(labels)
    for label in labels: assert {("test", label, m) for m in ("video", "shuffled", "blank", "text")} <= rows
    assert ("test", "tracker alone", "video") in rows and any(a.startswith("heuristic") for _, a, _ in rows)
    g = rep["goals"]["test"]
    assert g["chosen on val"] in labels and sum(g["letters"].values()) == g["n"] and "met" in g
    sh = g["paired"][f"{g['chosen on val']}, shuffled"]   # the shuffled control: each question's share of the frame orders it gets right
    assert rep["shuffles"] == len(g["shuffled orders"]) == 2 and abs(sh["accuracy_b"] - sum(g["shuffled orders"]) / 2) < 1e-9
    assert all(a["answer"] == "Never." or a["answer"].startswith("At ") for k, w in rep["when answers"].items() if "· cloze" in k for a in w.values())
    assert rep["chat"] and all(len(c["turns"]) == 2 for c in rep["chat"]) and "Chat" in (out / "report.md").read_text()


def test_tiny_train_to_chat(dry_run):
    "The dry run's checkpoint is one whole model for `vtom chat`: no tower, its perception reads the clip, the mind timeline goes into the prompt."
    from vtom.cli import main
    out, rep = dry_run
    ck = rep["checkpoints"]["text + LoRA"]
    clip = next(Path(rep["synth_dir"], "videos").glob("*.mp4"))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["chat", str(clip), "Where will A look for the ball?", "--checkpoint", ck, "--json", "--temperature", "0", "--max-new-tokens", "4"])
    res = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert rc == 0 and isinstance(res["answer"], str) and res["feature_source"] == "perception"
    assert res["parts"] == ["perception (frame)", "tracker (graph)", "projector (linear)", "mind route (text)"]
    assert res["turns"][0]["prompt"].startswith("<video>\nMind timeline.") and res["turns"][0]["prompt"].endswith("Where will A look for the ball?")


def test_chat_names_containers_after_the_question(dry_run):
    "A first question that names the containers ('... the red urn, the blue vase or ...?') has the clip's containers named so, by colour, in the prompt."
    from vtom.cli import main
    from vtom.study_mind import _events, true_containers
    out, rep = dry_run
    clip = next(Path(rep["synth_dir"], "videos").glob("*test*.mp4"))
    true = true_containers(_events(rep["synth_dir"], clip.stem))
    invented = {c: f"{c.split()[0]} {kind}" for c, kind in zip(true, ["urn", "vase", "tub", "crock"])}   # same colours, kinds never seen
    question = "Where will A look for the ball: " + " or ".join(f"the {invented[c]}" for c in reversed(true)) + "?"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["chat", str(clip), question, "--checkpoint", rep["checkpoints"]["text + LoRA"], "--json", "--temperature", "0", "--max-new-tokens", "2"])
    prompt = json.loads(buf.getvalue().strip().splitlines()[-1])["turns"][0]["prompt"]
    assert rc == 0 and f"Containers, left to right: {', '.join(invented[c] for c in true)}." in prompt, prompt


CHECKPOINT, SYNTH = os.environ.get("VTOM_MIND_CHECKPOINT"), os.environ.get("VTOM_MIND_SYNTH")


@pytest.mark.skipif(not (CHECKPOINT and SYNTH), reason="set VTOM_MIND_CHECKPOINT (a `vtom mind` arm) and VTOM_MIND_SYNTH (its synth folder)")
def test_chat_names_the_believed_container_on_held_out_clips():
    "A trained whole model (`vtom run tom-mind`) answers 'Where will A look for the OBJ?' with A's (false) belief on 3 held-out false-belief clips."
    from vtom.study_mind import chat_transcripts, false_belief_clips
    clips = false_belief_clips(SYNTH, "test")[:3]
    assert len(clips) == 3, f"{SYNTH} has fewer than 3 false-belief test clips"
    talk = chat_transcripts(CHECKPOINT, SYNTH, clips)
    assert all(c["container right"] for c in talk), [(c["video"], c["believed"], c["turns"][0][1]) for c in talk]


def test_tom_mind_preset_dry_run_is_clean_offline():
    "`vtom run tom-mind --dry-run` finds the pipeline, its parameters and the embedded LM (the study's own check is `vtom mind --dry-run` above)."
    import subprocess
    import sys
    res = subprocess.run([Path(sys.executable).parent / "vtom", "run", "tom-mind", "--dry-run"], capture_output=True, text=True)
    assert res.returncode == 0 and "OK, ready to run" in res.stdout, res.stdout + res.stderr


def test_random_looks_replay_the_event_log(tmp_path):
    "Each train video is redrawn from its event log with random looks on a random shelf, its labels read from the redrawn places; a log this generator cannot replay is an error naming the file."
    from vtom.core import VtomError
    from vtom.perception import observation_vector
    from vtom.study_mind import random_look_frames
    from vtom.synth import generate_dataset
    generate_dataset(tmp_path, num_videos=2, seed=3, size=64, splits={"train": 2}, progress=False, sheet=False)
    vid, log = next((p.stem, p) for p in sorted((tmp_path / "events").glob("*.json")))
    times = [0.0, 0.5, 1.0]
    frames, obs = random_look_frames(tmp_path, {vid: times}, 4, size=64)[vid]
    assert frames.shape == (3, 64, 64, 3) and frames.dtype == torch.uint8
    ev = json.loads(log.read_text())
    assert torch.equal(obs[:, :7], observation_vector(ev, times, 4)[:3, :7])   # where the object is seen: the log's, wherever the shelf is
    assert not torch.equal(frames, random_look_frames(tmp_path, {vid: times}, 4, size=64, seed=1)[vid][0])   # another seed, other looks
    log.write_text(json.dumps(ev | {"seed": ev["seed"] + 1}))   # a log whose video this seed does not make
    with pytest.raises(VtomError, match=vid):
        random_look_frames(tmp_path, {vid: times}, 4, size=64)
