"""Plain pytest checks of vtom.scoring, vtom.evaluate and the multiple-choice loaders (fixtures, tiny models, round trips)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vtom.data import DataFormatError, load_siq1, load_siq2, load_tinysocial
from vtom.evaluate import EvalSetup, eval_main, evaluate_question, evaluate_questions, summarize, write_submission
from vtom.scoring import (EvalError, answer_logprobs, encode_choices, mode_prompt, option_continuation, parse_choice, score_choices,
                          transform_features)

FIX = Path(__file__).resolve().parents[1] / "data" / "fixtures"
SIQ2 = FIX / "siq2"


@pytest.fixture(scope="module")
def tiny():
    from vtom.model import tiny_llm
    torch.manual_seed(0)
    lm, tok = tiny_llm()
    return lm.eval(), tok


def test_malformed_lines_name_the_line(tmp_path):
    good = (SIQ2 / "qa/qa_val.json").read_text().splitlines()[0]
    bad = tmp_path / "qa.json"
    bad.write_text(good + "\n" + good[:40] + "\n")
    with pytest.raises(DataFormatError, match=r"qa.json:2: not valid JSON"):
        load_siq2(bad)
    bad.write_text(good.replace('"answer_idx": 0', '"answer_idx": 9') + "\n")
    with pytest.raises(DataFormatError, match=r"qa.json:1: answer_idx must be 0-3"):
        load_siq2(bad)


def test_siq1_four_way_balanced_and_tinysocial():
    qs = load_siq1(FIX / "siq1/qa", FIX / "siq1/folds.json")
    assert len(qs) == 12
    for k in range(0, 12, 4):  # the four items of one question put the correct answer at each position once
        assert sorted(q.answer_idx for q in qs[k:k + 4]) == [0, 1, 2, 3]
    ts = load_tinysocial(FIX / "tinysocial/qa.jsonl")
    assert [q.answer_idx for q in ts] == [0, 1, 1]


def test_known_answer_from_logits():
    labels = torch.tensor([[-100, 1, 2], [-100, 3, 4]])
    logits = torch.zeros(2, 3, 8)
    logits[1, 0, 3] = logits[1, 1, 4] = 30.0
    total, count = answer_logprobs(logits, labels)
    assert count.tolist() == [2, 2] and int(total.argmax()) == 1
    assert math.isclose(total[0].item(), -2 * math.log(8), rel_tol=1e-6)


def test_a_model_that_prefers_one_continuation_picks_it(tiny):
    """Bias the tiny LM's output layer towards the tokens of one option: scoring must pick that option."""
    lm, tok = tiny
    q = load_siq2(SIQ2 / "qa/qa_val.json")[0]
    enc = encode_choices(tok, mode_prompt(q, "text"), [option_continuation(q, i) for i in range(4)])
    target = 2
    special = {t for t in enc[target]["labels"] if t != -100} - {t for i in range(4) if i != target for t in enc[i]["labels"]}
    bias = torch.zeros(lm.config.vocab_size)
    bias[list(special)] = 50.0
    head = lm.get_output_embeddings()
    lm.set_output_embeddings(_Biased(head, bias))
    try:
        s = score_choices(lm, enc, tok.pad_token_id)
    finally:
        lm.set_output_embeddings(head)
    assert int(np.argmax(s["mean"])) == target and int(np.argmax(s["sum"])) == target


class _Biased(torch.nn.Module):
    def __init__(self, head, bias):
        super().__init__()
        self.head, self.bias = head, bias

    def forward(self, x):
        return self.head(x) + self.bias


def test_deterministic_and_padding_invariant(tiny):
    lm, tok = tiny
    val = load_siq2(SIQ2 / "qa/qa_val.json")
    setup = EvalSetup(lm, tok)
    a = evaluate_questions(setup, val, "text", progress=False)
    b = evaluate_questions(setup, val, "text", progress=False)
    assert a == b and len(a["records"]) == len(val)
    enc = encode_choices(tok, mode_prompt(val[0], "answer-only"), [option_continuation(val[0], i) for i in range(4)])
    batch = score_choices(lm, enc, tok.pad_token_id)["sum"]
    alone = [score_choices(lm, [e], tok.pad_token_id)["sum"][0] for e in enc]
    assert np.allclose(batch, alone, atol=1e-4)


def test_video_modes_skip_missing_features(tiny):
    from vtom.model import VideoLLM, VideoLLMConfig
    lm, tok = tiny
    feats = {"vidA": torch.cat([torch.randn(5, 8), torch.zeros(3, 8), torch.randn(2, 8)])}
    vllm = VideoLLM(VideoLLMConfig(lm_name="tiny", vision_hidden_size=8, num_frames=8, num_spatial_tokens=2), lm, tok).eval()
    torch.nn.init.normal_(vllm.projector.weight)  # stands in for a trained projector (an untrained one emits zero tokens)
    setup = EvalSetup(vllm, vllm.tokenizer, "chat", feats, num_frames=8)
    val = load_siq2(SIQ2 / "qa/qa_val.json")
    res = {m: evaluate_questions(setup, val, m, progress=False) for m in ("video", "shuffled", "blank")}
    n_a = sum(q.video_id == "vidA" for q in val)
    assert all(len(r["records"]) == n_a and len(r["skipped"]) == len(val) - n_a for r in res.values())
    assert res["video"]["records"][0]["scores"]["letter"] != res["shuffled"]["records"][0]["scores"]["letter"]
    m = summarize(res["video"])
    assert m["n"] == n_a and m["skipped"] == len(val) - n_a
    with pytest.raises(EvalError):
        evaluate_questions(EvalSetup(lm, tok), val, "video", progress=False)


def test_shuffle_keeps_padding_and_rows():
    f = torch.cat([torch.arange(1, 5).float()[:, None].repeat(1, 2), torch.zeros(2, 2), torch.ones(3, 2) * 7])
    s = transform_features(f, "shuffled", 6, key="v")
    assert not torch.equal(s[:4], f[:4]) and sorted(s[:4, 0].tolist()) == [1, 2, 3, 4] and torch.equal(s[4:], f[4:])


def test_parse_choice():
    opts = ["red box", "blue box", "green box", "basket"]
    assert parse_choice("B", opts) == 1 and parse_choice("(D)", opts) == 3 and parse_choice("It is in the basket", opts) == 3
    assert parse_choice("I don't know", opts) is None


def test_submission_round_trip(tmp_path):
    src = SIQ2 / "qa/qa_test.json"
    qs = load_siq2(src)
    out = write_submission(src, {q.qid: (i * 3) % 4 for i, q in enumerate(qs)}, tmp_path / "sub.json")
    orig, new = src.read_text().splitlines(), out.read_text().splitlines()
    for i, (o, n) in enumerate(zip(orig, new)):
        assert n == o[:-1] + f', "answer_idx": {(i * 3) % 4}}}'
    assert [json.loads(n)["answer_idx"] for n in new] == [(i * 3) % 4 for i in range(len(orig))]
    with pytest.raises(EvalError, match="no prediction"):
        write_submission(src, {}, tmp_path / "x.json")


def test_cli_writes_metrics_and_submission(tmp_path):
    out = tmp_path / "m.json"
    assert eval_main(["siq2", "--qa", str(SIQ2 / "qa/qa_val.json"), "--split-file", str(SIQ2 / "original_split.json"),
                      "--mode", "answer-only", "--llm", "tiny", "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    m = json.loads(out.read_text())
    assert {"accuracy", "n", "skipped", "ci95", "by_subset", "by_qword", "mode", "llm"} <= set(m) and m["n"] == 8
    assert out.with_suffix(".png").is_file()
    with pytest.raises(EvalError, match="is empty"):
        eval_main(["siq2", "--qa", str(SIQ2 / "qa/qa_val.json"), "--mode", "video", "--llm", "tiny", "--features", str(tmp_path)])
    with pytest.raises(EvalError, match="--features DIR"):
        eval_main(["siq2", "--qa", str(SIQ2 / "qa/qa_val.json"), "--mode", "blank", "--llm", "tiny"])


def test_generate_mode_parses_the_letter(tiny):
    """A tiny LM made to say 'C' and stop answers C in the generative mode."""
    lm, tok = tiny
    val = load_siq2(SIQ2 / "qa/qa_val.json")[:2]
    head = lm.get_output_embeddings()
    says_c = _Script(head, [tok.convert_tokens_to_ids("C"), tok.eos_token_id], lm.config.vocab_size)
    lm.set_output_embeddings(says_c)
    recs = []
    try:
        for q in val:
            says_c.calls = 0
            recs.append(evaluate_question(EvalSetup(lm, tok), q, "text", scoring="generate"))
    finally:
        lm.set_output_embeddings(head)
    assert [r["pred"] for r in recs] == [2, 2] and recs[0]["generated"].strip() == "C"
    assert summarize({"records": recs, "skipped": [], "failed": [], "mode": "text", "scoring": "generate"})["unparsed"] == 0


class _Script(torch.nn.Module):
    "An output layer that forces token script[0] on its first call, then script[1] (reset `calls` per question)."
    def __init__(self, head, script, vocab):
        super().__init__()
        self.head, self.script, self.vocab, self.calls = head, script, vocab, 0

    def forward(self, x):
        out = self.head(x)
        tok = self.script[min(self.calls, 1)]
        self.calls += 1
        bias = torch.zeros(self.vocab)
        bias[tok] = 100.0
        return out + bias


def test_compare_rejects_mismatched_ids(tmp_path, capsys):
    def run(path, recs):
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
        return str(path)
    recs = [{"qid": f"q{i}", "video_id": f"v{i // 2}", "correct": i % 3 == 0} for i in range(12)]
    other = [dict(r, correct=not r["correct"]) for r in recs]
    a, b = run(tmp_path / "a.predictions.jsonl", recs), run(tmp_path / "b.predictions.jsonl", other)
    assert eval_main(["compare", a, b]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"n", "accuracy_a", "accuracy_b", "diff", "ci95", "p_mcnemar"} and out["n"] == 12
    assert math.isclose(out["diff"], 4 / 12 - 8 / 12)
    c = run(tmp_path / "c.predictions.jsonl", other[:-1] + [dict(other[-1], qid="elsewhere")])
    with pytest.raises(EvalError, match=r"different questions \(1 only in .*q11.*1 only in .*elsewhere"):
        eval_main(["compare", a, c])


def test_length_shortcut_by_hand():
    from vtom.scoring import length_shortcut
    opts, ntok = ["a", "bb bb bb", "c c", "dddd"], [2, 6, 3, 4]          # tokens; characters 1, 8, 3, 4
    assert length_shortcut("mean", ntok, opts, 1, copy=True) == 1.0       # copied text is free: the most tokens wins
    assert length_shortcut("mean", ntok, opts, 1) == 0.25                 # uniform tokens: all tie, ties split
    assert length_shortcut("sum", ntok, opts, 0) == 1.0                   # the fewest tokens wins
    assert length_shortcut("cloze", ntok, opts, 1) == 1.0                 # most characters per token: -6/8
    assert length_shortcut("cloze", [2, 2, 2, 2], ["ab", "abcd", "abcd", "a"], 1) == 0.5   # a tie of two
    assert all(length_shortcut("letter", ntok, opts, i, copy=c) == 0.25 for i in range(4) for c in (False, True))


@pytest.mark.parametrize("video", [False, True])
def test_shared_prefix_equals_full_sequences(tiny, video):
    from vtom.scoring import full_sequence_logprobs, rule_inputs, rule_scores, shared_prefix_logprobs
    from vtom.model import VideoLLM, VideoLLMConfig
    lm, tok = tiny
    model, feats, mode, nvt = lm, None, "text", 0
    if video:
        model = VideoLLM(VideoLLMConfig(lm_name="tiny", vision_hidden_size=8, num_frames=8, num_spatial_tokens=2), lm, tok).eval()
        tok, feats, mode, nvt = model.tokenizer, torch.randn(10, 8), "video", 10
    for q in load_siq2(SIQ2 / "qa/qa_val.json")[:3]:
        for rule in ("letter", "cloze"):
            user, answers = rule_inputs(q, mode, rule)
            enc = encode_choices(tok, user, answers, num_video_tokens=nvt)
            full = full_sequence_logprobs(model, enc, tok.pad_token_id, feats)
            shared = shared_prefix_logprobs(model, enc, tok.pad_token_id, feats)
            assert [len(f) for f in full] == [len(s) for s in shared] and len({len(f) for f in full}) > 1
            assert all(np.allclose(f, s, atol=1e-4) for f, s in zip(full, shared))
        one = shared_prefix_logprobs(model, enc := encode_choices(tok, *rule_inputs(q, mode, "letter"), num_video_tokens=nvt),
                                     tok.pad_token_id, feats, first_only=True)
        assert np.allclose(rule_scores("letter", one, q.options), rule_scores("letter", full_sequence_logprobs(model, enc, tok.pad_token_id, feats), q.options), atol=1e-4)


def test_limit_samples_whole_videos():
    from vtom.data import MCQuestion
    from vtom.evaluate import sample_videos
    qs = [MCQuestion(f"q{i}", "Why?", ["a", "b", "c", "d"], f"v{i % 20}", i % 4) for i in range(100)]   # 20 videos x 5, interleaved
    some = sample_videos(qs, 12)
    vids = {q.video_id for q in some}
    assert len(some) == 15 and len(vids) == 3 and all(sum(q.video_id == v for q in qs) == sum(q.video_id == v for q in some) for v in vids)
    assert some == sample_videos(qs, 12) and vids != {q.video_id for q in sample_videos(qs, 12, seed=1)}
    assert [q.qid for q in some] == sorted((q.qid for q in some), key=lambda s: int(s[1:]))    # file order kept
    with pytest.raises(EvalError, match="positive"):
        sample_videos(qs, 0)


def test_think_template_is_refused(tiny):
    """A chat template whose generation prompt adds <think> is not a prefix of the conversation: clear error naming it."""
    import copy
    from vtom.core import VtomError
    _, tok = tiny
    think = copy.deepcopy(tok)
    think.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                           "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
    q = load_siq2(SIQ2 / "qa/qa_val.json")[0]
    with pytest.raises(VtomError, match=r"chat template of .* not a prefix.*<think>.*vicuna_v1_1"):
        encode_choices(think, mode_prompt(q, "text"), [option_continuation(q, 0)])
    plain = copy.deepcopy(tok)
    plain.chat_template = think.chat_template.replace("<think>\n", "")
    assert len(encode_choices(plain, mode_prompt(q, "text"), [option_continuation(q, 0)])) == 1


def test_video_in_two_subsets_warns_and_first_wins(tmp_path, caplog):
    from vtom.data import load_video_subsets
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"subsets": {"youtubeclips": {"train": ["v1", "v2"], "val": ["v1"]}, "movieclips": {"test": ["v2"]},
                                         "car": {"train": ["v2", "v3"]}}}))
    with caplog.at_level("WARNING"):
        assert load_video_subsets(f) == {"v1": "youtubeclips", "v2": "youtubeclips", "v3": "car"}
    assert "1 video(s) sit in more than one subset" in caplog.text and "v2 (youtubeclips, movieclips, car)" in caplog.text


def test_shuffled_checks_num_frames(tiny):
    from vtom.model import VideoLLM, VideoLLMConfig
    lm, tok = tiny

    class Store(dict):
        def ids(self): return list(self)
        def meta(self, vid): return {"num_frames": 6}
    feats = Store(vidA=torch.randn(8, 8))
    vllm = VideoLLM(VideoLLMConfig(lm_name="tiny", vision_hidden_size=8, num_frames=6, num_spatial_tokens=2), lm, tok).eval()
    q = next(q for q in load_siq2(SIQ2 / "qa/qa_val.json") if q.video_id == "vidA")
    assert evaluate_question(EvalSetup(vllm, vllm.tokenizer, "chat", feats, num_frames=6), q, "shuffled")["pred"] in range(4)
    with pytest.raises(EvalError, match="num_frames=6 but the evaluation uses num_frames=5"):
        evaluate_question(EvalSetup(vllm, vllm.tokenizer, "chat", feats, num_frames=5), q, "shuffled")


def test_surface_baselines_need_no_model():
    val = load_siq2(SIQ2 / "qa/qa_val.json")
    res = evaluate_questions(None, val, "longest-option", progress=False)
    assert [r["pred"] for r in res["records"]] == [max(range(4), key=lambda i: (len(q.options[i].strip()), -i)) for q in val]
    res = evaluate_questions(None, val, "majority-position", prior=[val[0], val[0], val[1]], progress=False)
    assert {r["pred"] for r in res["records"]} == {val[0].answer_idx} and res["majority_from"] == "prior"
    m = summarize(evaluate_questions(None, val, "shortest-option", progress=False))
    assert m["n"] == 8 and m["mode"] == "shortest-option" and "accuracy_letter" not in m


def test_twins_of_a_pair_are_one_bootstrap_cluster():
    "A synth 2.1 question's record carries its pair of matched twins, and the video-clustered CI resamples the pair as one unit."
    from dataclasses import replace
    from vtom.evaluate import accuracy_table, pair_records
    val = load_siq2(SIQ2 / "qa/qa_val.json")
    assert "pair" not in evaluate_question(None, val[0], "longest-option")   # Social-IQ 2.0: clustered by video
    twins = [replace(q, raw={**q.raw, "pair": "scene-0"}) for q in val]      # every question: one scene
    recs = evaluate_questions(None, twins, "longest-option", progress=False)["records"]
    assert {r["pair"] for r in recs} == {"scene-0"} and set(pair_records(recs, recs)[2]) == {"scene-0"}
    acc = accuracy_table(recs)
    assert acc["ci95"] == [acc["accuracy"]] * 2   # one cluster: every resample is the whole set


def _vtom(*args, cwd=None):
    import subprocess
    import sys
    exe = Path(sys.executable).parent / "vtom"
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_exit_codes_of_bad_inputs(tmp_path):
    empty, blank = tmp_path / "empty.json", tmp_path / "blank.json"
    empty.write_text("")
    blank.write_text("\n  \n")
    for f in (empty, blank):
        r = _vtom("eval", "siq2", "--qa", f, "--llm", "tiny")
        assert r.returncode == 2 and "no questions (empty or blank file)" in r.stderr and "Traceback" not in r.stderr
    r = _vtom("eval", "siq2", "--qa", SIQ2 / "qa/qa_test.json", "--llm", "tiny")
    assert r.returncode == 2 and "has an answer" in r.stderr and "--write-submission" in r.stderr
    for bad in ("0", "-1"):
        r = _vtom("eval", "siq2", "--qa", SIQ2 / "qa/qa_val.json", "--llm", "tiny", "--limit", bad)
        assert r.returncode == 2 and "--limit" in r.stderr and "at least 1" in r.stderr
    a, b = tmp_path / "a.predictions.jsonl", tmp_path / "b.predictions.jsonl"
    a.write_text(json.dumps({"qid": "q1", "video_id": "v", "correct": True}) + "\n")
    b.write_text(json.dumps({"qid": "q2", "video_id": "v", "correct": True}) + "\n")
    r = _vtom("eval", "compare", a, b)
    assert r.returncode == 2 and "different questions" in r.stderr


def test_unanswered_questions_are_counted_and_no_nan(tmp_path):
    lines = (SIQ2 / "qa/qa_val.json").read_text().splitlines()
    rec = json.loads(lines[3])
    for k in ("answer_idx", "ans_corr", "idx_types"): rec.pop(k, None)
    qa = tmp_path / "qa.json"
    qa.write_text("\n".join(lines[:3] + [json.dumps(rec)] + lines[4:]) + "\n")
    out = tmp_path / "m.json"
    assert eval_main(["siq2", "--qa", str(qa), "--mode", "longest-option", "--out", str(out), "--no-progress"]) == 0
    m = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the metrics JSON"))
    assert m["n"] == 7 and m["unanswered"] == 1 and m["unanswered_qids"] == [rec["qid"]]


def test_failed_questions_exit_1(tmp_path):
    import pickle
    store = tmp_path / "feats"
    store.mkdir()
    (store / "vidA.pkl").write_bytes(pickle.dumps(np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)))
    (store / "vidB.pkl").write_bytes(pickle.dumps(np.zeros((3, 8), np.float32)))      # too few rows for num_frames=8
    args = ["siq2", "--qa", str(SIQ2 / "qa/qa_val.json"), "--mode", "blank", "--llm", "tiny", "--device", "cpu",
            "--features", str(store), "--num-frames", "8", "--no-progress", "--out", str(tmp_path / "m.json")]
    assert eval_main(args) == 1
    m = json.loads((tmp_path / "m.json").read_text())
    n_b = sum(q.video_id == "vidB" for q in load_siq2(SIQ2 / "qa/qa_val.json"))
    assert m["failed"] == n_b and m["n"] > 0 and m["failures"][0]["qid"].startswith("vidB")


def _timeline(expression: str) -> dict:
    "A hand-written timeline record (vtom.social's shape): one face throughout, one expression."
    face = {"box": [0, 0, 10, 10], "track": 0, "expression": {expression: 0.9, "neutral": 0.1}}
    return {"duration": 4.0, "speech": [], "words": [], "transcript": "",
            "frames": [{"t": t, "faces": [face], "voice": 0.0, "speaker": None} for t in (0.0, 2.0)]}


def test_social_mode_reads_the_store_and_names_a_missing_timeline(tmp_path):
    from vtom.social import timeline_path
    qa, store = str(SIQ2 / "qa/qa_val.json"), tmp_path / "social"
    vids = sorted({q.video_id for q in load_siq2(SIQ2 / "qa/qa_val.json")})
    with pytest.raises(EvalError, match="--social-store DIR"):
        eval_main(["siq2", "--qa", qa, "--mode", "social", "--llm", "tiny"])
    with pytest.raises(EvalError, match="no such folder"):
        eval_main(["siq2", "--qa", qa, "--mode", "social", "--llm", "tiny", "--social-store", str(store)])
    store.mkdir()
    for v in vids[:-1]: timeline_path(store, v).write_text(json.dumps(_timeline("happy")))
    with pytest.raises(EvalError, match=rf"'{vids[-1]}'.*vtom social VIDEO --store"):   # stops before any question
        eval_main(["siq2", "--qa", qa, "--mode", "social", "--llm", "tiny", "--social-store", str(store), "--no-progress"])
    with pytest.raises(EvalError, match="needs --videos"):
        eval_main(["siq2", "--qa", qa, "--mode", "social", "--llm", "tiny", "--social-store", str(store), "--compute-social"])
    timeline_path(store, vids[-1]).write_text(json.dumps(_timeline("sad")))
    outs = {}
    for mode in ("text", "social"):
        outs[mode] = tmp_path / f"{mode}.json"
        assert eval_main(["siq2", "--qa", qa, "--mode", mode, "--llm", "tiny", "--device", "cpu", "--social-store", str(store),
                          "--out", str(outs[mode]), "--no-progress"]) == 0
    m = json.loads(outs["social"].read_text())
    assert m["mode"] == "social" and m["n"] == 8 and m["social_store"] == str(store) and m["failed"] == 0
    recs = {mode: [json.loads(l) for l in outs[mode].with_suffix(".predictions.jsonl").read_text().splitlines()] for mode in outs}
    assert [r["qid"] for r in recs["text"]] == [r["qid"] for r in recs["social"]]
    assert any(a["scores"]["letter"] != b["scores"]["letter"] for a, b in zip(recs["text"], recs["social"]))  # the timeline is read
    import contextlib, io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): assert eval_main(["compare", str(outs["social"]), str(outs["text"])]) == 0
    assert json.loads(buf.getvalue())["n"] == 8


def test_social_tokens_mode_through_the_cli(tmp_path):
    "vtom eval --mode video+social-tokens: reads the timelines at the feature timestamps through the checkpoint's social projector; clear errors otherwise."
    from safetensors.torch import save_file
    from vtom.model import VideoLLM, VideoLLMConfig, load_llm
    from vtom.social import SOCIAL_DIM, timeline_path
    qa = str(SIQ2 / "qa/qa_val.json")
    vids = sorted({q.video_id for q in load_siq2(SIQ2 / "qa/qa_val.json")})
    feats, store = tmp_path / "features", tmp_path / "social"
    feats.mkdir(); store.mkdir()
    g = torch.Generator().manual_seed(0)
    for v in vids:
        save_file({"features": torch.cat([torch.randn(2, 8, generator=g), torch.zeros(2, 8), torch.randn(2, 8, generator=g)])},
                  str(feats / f"{v}.safetensors"), metadata={"vtom": json.dumps({"num_frames": 4, "timestamps": [0.5, 2.5]})})
    lm, tok = load_llm("tiny", device="cpu")
    ckpts = {}
    for name, dim in (("plain", 0), ("social", SOCIAL_DIM)):
        torch.manual_seed(0)
        m = VideoLLM(VideoLLMConfig(lm_name="tiny", vision_hidden_size=8, num_frames=4, num_spatial_tokens=2, social_dim=dim), lm, tok)
        torch.nn.init.normal_(m.projector.weight)
        if dim: torch.nn.init.normal_(m.social_projector.mlp[2].weight)   # stands in for a trained social projector
        ckpts[name] = m.save_pretrained(tmp_path / name)
    base = ["synth", "--qa", qa, "--features", str(feats), "--llm", "tiny", "--device", "cpu", "--no-progress", "--social-store", str(store)]
    for v in vids[:-1]: timeline_path(store, v).write_text(json.dumps(_timeline("happy")))
    with pytest.raises(EvalError, match=rf"'{vids[-1]}'.*vtom social VIDEO --store"):
        eval_main(base + ["--mode", "video+social-tokens", "--checkpoint", str(ckpts["social"])])
    timeline_path(store, vids[-1]).write_text(json.dumps(_timeline("sad")))
    with pytest.raises(EvalError, match="needs --checkpoint with social tokens"): eval_main(base + ["--mode", "video+social-tokens"])
    with pytest.raises(EvalError, match="has no social projector"):
        eval_main(base + ["--mode", "video+social-tokens", "--checkpoint", str(ckpts["plain"])])
    outs = {}
    for mode in ("video", "video+social-tokens"):
        outs[mode] = tmp_path / f"{mode}.json"
        assert eval_main(base + ["--mode", mode, "--checkpoint", str(ckpts["social"]), "--out", str(outs[mode])]) == 0
    m = json.loads(outs["video+social-tokens"].read_text())
    assert m["mode"] == "video+social-tokens" and m["n"] == 8 and m["failed"] == 0 and m["social_tokens"] == SOCIAL_DIM
    recs = {k: [json.loads(l) for l in p.with_suffix(".predictions.jsonl").read_text().splitlines()] for k, p in outs.items()}
    assert any(a["scores"]["letter"] != b["scores"]["letter"] for a, b in zip(recs["video"], recs["video+social-tokens"]))
