"""Feature extraction: parity with the reference's hidden_states[-2] pooling, resumability after a kill, corrupt videos,
the reference .pkl reader, and the command line."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vtom.core import VtomError
from vtom.decode import make_test_video, read_video
from vtom.features import (FeatureStore, extract_to_store, extract_video_features, features_main, list_videos,
                           load_features, load_vision_tower, pool_features, preprocess_frames, reference_preprocess,
                           tiny_hf_clip, video_id_of)

VTOM = Path(sys.executable).parent / "vtom"


@pytest.fixture(scope="module")
def tiny_tower(tmp_path_factory):
    folder = tiny_hf_clip(tmp_path_factory.mktemp("tower") / "tiny-clip", image_size=32, patch_size=8, hidden_size=48, layers=3)
    return folder, load_vision_tower(f"hf:{folder}", device="cpu", dtype="fp32")  # exact parity: fp32


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    for i in range(4): make_test_video(d / f"clip_{i}.mp4", seconds=1.0 + 0.5 * i, fps=8, size=(64, 48))
    return d


def _independent_features(frames: np.ndarray, folder: Path, num_frames: int) -> np.ndarray:
    "The reference's computation, written independently: PIL preprocessing, full model, hidden_states[-2], numpy pooling."
    from transformers import CLIPVisionModel
    model = CLIPVisionModel.from_pretrained(folder).eval()
    px = reference_preprocess(frames, model.config.image_size)
    with torch.no_grad(): hs = model(pixel_values=px, output_hidden_states=True).hidden_states
    feats = hs[-2][:, 1:].numpy().astype("float16")
    t = feats.shape[0]
    temporal = np.pad(feats.mean(axis=1), ((0, num_frames - t), (0, 0)), mode="constant")
    return np.concatenate([temporal, feats.mean(axis=0)], axis=0)


def test_pooled_parity_with_hidden_states_minus_2(tiny_tower, videos):
    folder, tower = tiny_tower
    path = videos / "clip_2.mp4"  # 2 s at 8 fps = 16 frames: fewer than num_frames, so padding is exercised
    feats, meta = extract_video_features(path, tower, num_frames=20, batch_size=7)
    expected = _independent_features(read_video(path, 20).frames, folder, 20)
    assert feats.shape == expected.shape == (20 + 16, 48) and feats.dtype == torch.float16
    assert meta["frames"] == 16 and meta["tower"] == f"hf:{folder}" and len(meta["timestamps"]) == 16
    np.testing.assert_allclose(feats.float().numpy(), expected.astype(np.float32), atol=2e-3, rtol=1e-3)
    assert np.all(feats[16:20].numpy() == 0)


def test_tokens_parity_random_frames(tiny_tower):
    folder, tower = tiny_tower
    frames = np.random.default_rng(0).integers(0, 256, (9, 50, 70, 3), dtype=np.uint8)
    from vtom.features import encode_frames
    tokens = encode_frames(frames, tower, batch_size=4)
    pooled = pool_features(tokens, 12).numpy()
    np.testing.assert_allclose(pooled, _independent_features(frames, folder, 12).astype(np.float32), atol=2e-3, rtol=1e-3)


def test_preprocess_stretch_matches_reference_bit_for_bit():
    frames = np.random.default_rng(1).integers(0, 256, (4, 37, 91, 3), dtype=np.uint8)
    torch.testing.assert_close(preprocess_frames(frames, 32), reference_preprocess(frames, 32), rtol=0, atol=1e-5)
    with pytest.raises(VtomError): preprocess_frames(frames[..., :2], 32)
    with pytest.raises(VtomError): preprocess_frames(frames, 32, mode="squash")


def test_pool_rejects_too_many_frames():
    with pytest.raises(VtomError): pool_features(torch.zeros(5, 3, 2), num_frames=4)


def test_corrupt_video_recorded_and_skipped(tiny_tower, videos, tmp_path):
    _, tower = tiny_tower
    broken = tmp_path / "broken.mp4"; broken.write_bytes(b"not a video at all")
    missing = tmp_path / "missing.mp4"
    lst = tmp_path / "list.txt"
    lst.write_text("# videos\n" + "\n".join([str(videos / "clip_0.mp4"), "broken.mp4", str(missing), str(videos / "clip_1.mp4")]) + "\n")
    assert [p.name for p in list_videos(lst)] == ["clip_0.mp4", "broken.mp4", "missing.mp4", "clip_1.mp4"]
    s = extract_to_store(list_videos(lst), tmp_path / "out", tower, num_frames=8, progress=False)
    assert (s["done"], s["failed"]) == (2, 2)
    store = FeatureStore(tmp_path / "out")
    assert store.ids() == ["clip_0", "clip_1"]
    assert sorted(r["video_id"] for r in store.failures()) == ["broken", "missing"]
    assert {r["error"] for r in store.failures()} == {"VideoDecodeError"} and all(r["path"] and r["message"] for r in store.failures())


def test_interrupt_in_process_leaves_no_half_files(tiny_tower, videos, tmp_path, monkeypatch):
    _, tower = tiny_tower
    import vtom.features as vf
    real, calls = vf.features_from_clip, []
    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3: raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(vf, "features_from_clip", flaky)
    with pytest.raises(KeyboardInterrupt):
        extract_to_store(list_videos(videos), tmp_path / "out", tower, num_frames=8, progress=False)
    monkeypatch.setattr(vf, "features_from_clip", real)
    store = FeatureStore(tmp_path / "out")
    assert store.ids() == ["clip_0", "clip_1"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    s = extract_to_store(list_videos(videos), tmp_path / "out", tower, num_frames=8, progress=False)
    assert (s["done"], s["skipped"]) == (2, 2)
    assert [r["video_id"] for r in store.manifest()] == ["clip_0", "clip_1", "clip_2", "clip_3"]


def test_kill_mid_run_then_resume_recomputes_nothing(tmp_path):
    vids = tmp_path / "videos"
    for i in range(8): make_test_video(vids / f"v{i}.mp4", seconds=2.0, fps=8, size=(64, 48))
    out = tmp_path / "store"
    cmd = [str(VTOM), "features", str(vids), str(out), "--vision", "random:ViT-B-32", "--num-frames", "8", "--workers", "1", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(out.glob("*.safetensors"))) < 2: time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL); proc.wait()
    store = FeatureStore(out)
    first = {i: (out / f"{i}.safetensors").stat().st_mtime_ns for i in store.ids()}
    assert 2 <= len(first) < 8
    for i in first: assert store[i].shape == (8 + 49, 768)  # every finished-looking file is complete
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["skipped"] == len(first) and summary["done"] == 8 - len(first) and summary["failed"] == 0
    assert store.ids() == [f"v{i}" for i in range(8)]
    assert all((out / f"{i}.safetensors").stat().st_mtime_ns == t for i, t in first.items())  # nothing recomputed
    assert [r["video_id"] for r in store.manifest()] == store.ids()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_reference_pickles(tmp_path):
    arr = np.random.default_rng(2).standard_normal((356, 1024)).astype(np.float16)
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        (tmp_path / "v_x.pkl").write_bytes(pickle.dumps(arr, protocol=proto))
        got = load_features(tmp_path / "v_x.pkl")
        assert got.dtype == torch.float16 and torch.equal(got, torch.from_numpy(arr))
    assert torch.equal(load_features(tmp_path, "v_x"), torch.from_numpy(arr)) and "v_x" in FeatureStore(tmp_path)
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps(os.getcwd))
    with pytest.raises(VtomError, match="only numpy arrays"): load_features(tmp_path / "bad.pkl")
    (tmp_path / "vec.pkl").write_bytes(pickle.dumps(np.zeros(3)))
    with pytest.raises(VtomError, match="2-D"): load_features(tmp_path / "vec.pkl")
    with pytest.raises(VtomError, match="No features for video"): load_features(tmp_path, "nope")
    with pytest.raises(VtomError, match="pass video_id"): load_features(tmp_path)


def test_default_dtype_and_bf16_parity():
    "auto: bf16 for ViT towers on AMX CPUs (else fp32), fp32 for the control towers; bf16 tokens of real frames stay within cosine 0.9999 of fp32."
    from vtom.decode import packaged_video
    from vtom.core import cpu_bf16_fast
    from vtom.features import tower_dtype
    cpu = torch.device("cpu")
    assert tower_dtype("random", cpu) == (torch.bfloat16 if cpu_bf16_fast() else torch.float32)
    assert tower_dtype("thumbnail", cpu) == tower_dtype("imagenet", cpu) == torch.float32
    assert tower_dtype("hf", cpu, "fp32") == torch.float32 and tower_dtype("hf", torch.device("cuda"), "auto") == torch.float16
    fp32 = load_vision_tower("random:ViT-B-32", device="cpu", dtype="fp32")
    bf16 = load_vision_tower("random:ViT-B-32", device="cpu", dtype="bf16")
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    px = preprocess_frames(read_video(packaged_video("bikes"), 6).frames, fp32.image_size)
    a, b = fp32.encode(px), bf16.encode(px).float()
    cos = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1))
    assert cos.min() > 0.9999 and not torch.equal(a, b), cos
    pa, pb = pool_features(a, 8), pool_features(b, 8)
    assert torch.nn.functional.cosine_similarity(pa[:6], pb[:6]).min() > 0.9999


def test_auto_dtype_resumes_a_store_in_its_own_dtype(videos, tmp_path, capsys):
    "A store started in fp32 (the CPU default before bf16) resumes in fp32 under --dtype auto; another explicit dtype is refused."
    out = tmp_path / "store"
    common = ["--vision", "random:ViT-B-32", "--num-frames", "4", "--no-progress", "--workers", "1"]
    assert features_main([str(videos / "clip_0.mp4"), str(out), "--dtype", "fp32", *common]) == 0
    assert features_main([str(videos), str(out), *common]) == 0  # auto: the store's fp32, not bf16
    store = FeatureStore(out)
    assert store.settings()["dtype"] == "float32" and len(store) == 4
    with pytest.raises(VtomError, match="dtype"): features_main([str(videos), str(out), "--dtype", "bf16", *common])


def test_video_id_and_cli_errors(tmp_path, capsys):
    assert video_id_of("a/b/v_12.avi.part.mp4") == "v_12"
    with pytest.raises(VtomError, match="does not exist"): features_main([str(tmp_path / "nope"), str(tmp_path / "out")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(VtomError, match="No videos"): features_main([str(tmp_path / "empty"), str(tmp_path / "out")])
    with pytest.raises(VtomError, match="Unknown vision tower"): load_vision_tower("clip-vit")


def test_ranks_split_without_overlap(videos, tmp_path):
    tower = load_vision_tower("random:ViT-B-32", device="cpu")
    vids = list_videos(videos)
    done = []
    for r in range(3):
        s = extract_to_store(vids, tmp_path / "out", tower, num_frames=4, rank=r, world_size=3, progress=False)
        done.append(s["done"])
    assert done == [2, 1, 1] and FeatureStore(tmp_path / "out").ids() == [video_id_of(v) for v in vids]


def test_window_and_crop(tiny_tower, videos):
    _, tower = tiny_tower
    feats, meta = extract_video_features(videos / "clip_3.mp4", tower, num_frames=6, window=(0.5, 1.5))
    assert meta["frames"] == 6 and all(0.5 - 1e-6 <= t <= 1.5 + 1e-6 for t in meta["timestamps"]) and feats.shape == (6 + 16, 48)
    square = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    torch.testing.assert_close(preprocess_frames(square, 32, mode="crop"), preprocess_frames(square, 32))  # nothing to resize
    wide = np.random.default_rng(4).integers(0, 256, (2, 32, 64, 3), dtype=np.uint8)
    torch.testing.assert_close(preprocess_frames(wide, 32, mode="crop"), preprocess_frames(wide[:, :, 16:48], 32))  # centre crop


def test_features_backend_nvdec_reaches_the_decoder(videos, tmp_path, fake_nvdec):
    "`vtom features --backend nvdec` decodes every video with nvdec (decoder mocked: no GPU here), with the same features as PyAV."
    common = ["--vision", "random:ViT-B-32", "--num-frames", "4", "--no-progress", "--dtype", "fp32"]
    assert features_main([str(videos), str(tmp_path / "nv"), "--backend", "nvdec", *common]) == 0
    assert fake_nvdec.calls == 4
    assert features_main([str(videos), str(tmp_path / "av"), "--backend", "pyav", *common]) == 0
    nv, ref = FeatureStore(tmp_path / "nv"), FeatureStore(tmp_path / "av")
    assert nv.ids() == ref.ids() and all(torch.equal(nv[i], ref[i]) for i in ref.ids())
