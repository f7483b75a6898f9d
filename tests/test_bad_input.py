"""Issue 19: no silent wrong results. Each case runs the real `vtom` command on bad input made in code and checks the
exit code, the message, and that nothing finished was lost. Tiny towers and few frames keep it fast."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch

from vtom.core import FolderLock
from vtom.decode import BACKENDS, make_test_video
from vtom.features import FeatureStore, check_feature_file, load_features, tiny_hf_clip

VTOM = Path(sys.executable).parent / "vtom"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def vtom(*args) -> subprocess.CompletedProcess:
    "Run `vtom ARGS` in this process (imports are paid once); exit code and output as a finished subprocess would give them."
    import contextlib, io, logging
    from vtom.cli import main
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)   # vtom's log lines (warnings) go to stderr like the command's
    logging.getLogger("vtom").addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main(list(map(str, args)))
    except SystemExit as e: rc = e.code   # argparse
    finally: logging.getLogger("vtom").removeHandler(handler)
    return subprocess.CompletedProcess(["vtom", *map(str, args)], rc, out.getvalue(), err.getvalue())


def summary(res: subprocess.CompletedProcess) -> dict:
    return json.loads(res.stdout.strip().splitlines()[-1])


def no_traceback(res: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in res.stderr + res.stdout, res.stderr


@pytest.fixture(scope="module")
def tower(tmp_path_factory) -> str:
    return f"hf:{tiny_hf_clip(tmp_path_factory.mktemp('tower') / 'tiny-clip')}"


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    "Two good clips, one cut in half (its index promises frames that are not there) and one that is not a video at all."
    d = tmp_path_factory.mktemp("videos")
    for i in range(2): make_test_video(d / f"good{i}.mp4", seconds=1.0, fps=8, size=(64, 48))
    data = make_test_video(d / "whole.mp4", seconds=2.0, fps=10, size=(64, 48), gop=5, faststart=True).read_bytes()
    (d / "whole.mp4").unlink()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video at all")
    return d


def features(src, out, tower, *extra):
    return vtom("features", src, out, "--vision", tower, "--num-frames", 4, "--no-progress", *extra)


def test_damaged_videos_fail_alone_exit_1(videos, tower, tmp_path):
    "Issue 7 (failures.jsonl grew per rerun) and 3: damaged videos are named, good ones done, exit 1, one line per failure."
    out = tmp_path / "store"
    res = features(videos, out, tower)
    no_traceback(res)
    assert res.returncode == 1 and (summary(res)["done"], summary(res)["failed"]) == (2, 2), res.stderr
    assert "failed: truncated: " in res.stderr and "failed: garbage: " in res.stderr and "2 of 4 videos failed" in res.stderr
    assert "truncated" in res.stderr.split("failed: truncated: ")[1].splitlines()[0]   # the reason, not only the name
    for _ in range(2):
        res = features(videos, out, tower)
        assert res.returncode == 1 and summary(res)["skipped"] == 2
    lines = (out / "failures.jsonl").read_text().splitlines()
    assert sorted(json.loads(l)["video_id"] for l in lines) == ["garbage", "truncated"], "one line per still-failing video"
    assert all(check_feature_file(out / f"good{i}.safetensors") is None for i in range(2))
    for f in ("good0.safetensors", "manifest.jsonl", "failures.jsonl", "settings.json"):   # issue 7: files were 0600
        assert (out / f).stat().st_mode & 0o777 == 0o666 & ~_umask(), f


def _umask() -> int:
    old = os.umask(0o022); os.umask(old)
    return old


def test_every_video_failed_is_not_success(videos, tower, tmp_path):
    "Issue 3: done 0, failed 1 used to exit 0."
    res = features(videos / "garbage.mp4", tmp_path / "store", tower)
    no_traceback(res)
    assert res.returncode == 1 and summary(res)["done"] == 0 and "1 of 1 videos failed" in res.stderr


def test_unknown_backend_is_a_usage_error(videos, tower, tmp_path):
    "Issue 3: `--backend foo` made every good video 'unreadable' (exit 0); now a usage error before any work."
    res = features(videos, tmp_path / "store", tower, "--backend", "foo")
    no_traceback(res)
    assert res.returncode == 2 and "Unknown backend 'foo'" in res.stderr and not (tmp_path / "store").exists()


@pytest.mark.skipif("decord" not in BACKENDS, reason="decord not installed")
def test_wrong_frames_from_decord_fail_the_video(tower, tmp_path):
    "Issue 1: decord returned other frames than the requested ones and the store said done. HEVC with a short GOP is such a file."
    import av
    if "libx265" not in av.codecs_available: pytest.skip("no libx265 in this FFmpeg")
    src = tmp_path / "v"; src.mkdir()
    make_test_video(src / "hevc.mp4", seconds=3.0, fps=15, gop=12, codec="libx265", size=(64, 48))
    res = features(src, tmp_path / "store", tower, "--backend", "decord", "--num-frames", 10)
    no_traceback(res)
    assert res.returncode == 1 and "decord returned the wrong picture for frame" in res.stderr, res.stderr
    assert FeatureStore(tmp_path / "store").ids() == []                 # nothing wrong was stored
    res = features(src, tmp_path / "store", tower, "--num-frames", 10)  # auto: PyAV, whose every frame is checked
    assert res.returncode == 0 and summary(res)["done"] == 1, res.stderr


def test_mixed_settings_are_refused(videos, tower, tmp_path):
    "Issue 2: another --num-frames or --vision into an existing store used to mix array shapes silently (exit 0)."
    src = tmp_path / "v"; src.mkdir()
    for i in range(2): (src / f"good{i}.mp4").symlink_to(videos / f"good{i}.mp4")
    out = tmp_path / "store"
    assert features(src, out, tower).returncode == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.safetensors")}
    res = features(src, out, tower, "--num-frames", 6)   # argparse keeps the last --num-frames
    no_traceback(res)
    assert res.returncode == 2 and "num_frames=4" in res.stderr and "num_frames=6" in res.stderr and "new folder" in res.stderr
    res = features(src, out, "random:ViT-B-32")
    assert res.returncode == 2 and "random:ViT-B-32" in res.stderr and "new folder" in res.stderr
    (out / "settings.json").unlink()   # a store from before settings were recorded: its files' headers still tell
    res = features(src, out, tower, "--num-frames", 6)
    assert res.returncode == 2 and "other settings" in res.stderr, res.stderr
    assert {p.name: p.read_bytes() for p in out.glob("*.safetensors")} == before, "nothing finished was touched"


def test_resume_recomputes_a_damaged_file(videos, tower, tmp_path):
    "Issue 7: resume trusted any existing file; a truncated one was skipped and stayed unreadable."
    src = tmp_path / "v"; src.mkdir()
    (src / "good0.mp4").symlink_to(videos / "good0.mp4")
    out = tmp_path / "store"
    assert features(src, out, tower).returncode == 0
    f = out / "good0.safetensors"
    whole, before = f.read_bytes(), load_features(f).clone()   # (a loaded tensor maps the file: copy it)
    f.write_bytes(whole[:-40])
    res = features(src, out, tower)
    assert res.returncode == 0 and summary(res)["done"] == 1 and "recomputing" in res.stderr
    assert check_feature_file(f) is None and torch.allclose(load_features(f).float(), before.float(), atol=1e-2)


def test_output_path_is_an_existing_file(videos, tower, tmp_path):
    "Issue 6: a traceback when OUT is a file; now one line and exit 2, for `features` and `run`."
    (tmp_path / "afile").write_text("x")
    res = features(videos, tmp_path / "afile", tower)
    no_traceback(res)
    assert res.returncode == 2 and "is an existing file" in res.stderr
    res = vtom("run", "02_features", "--out", tmp_path / "afile", "-q")
    no_traceback(res)
    assert res.returncode == 2 and "is an existing file" in res.stderr


def test_second_writer_stops(videos, tower, tmp_path):
    "Issue 5: two `vtom features` into one folder both did all the work. A held lock stops the second with a message."
    out = tmp_path / "store"
    with FolderLock(out, "feature-store"):   # what a running `vtom features` holds
        res = features(videos / "good0.mp4", out, tower)
    no_traceback(res)
    assert res.returncode == 2 and f"pid {os.getpid()}" in res.stderr and "in use by another writer" in res.stderr
    assert FeatureStore(out).ids() == []


def test_two_writers_at_once_never_both_work(videos, tower, tmp_path):
    "Two real processes started together: every video is done exactly once; a writer that found the folder busy says so."
    src = tmp_path / "v"; src.mkdir()
    for i in range(6): make_test_video(src / f"clip{i}.mp4", seconds=1.0, fps=8, size=(64, 48))
    out = tmp_path / "store"
    cmd = [str(VTOM), "features", src, out, "--vision", tower, "--num-frames", 4, "--no-progress"]
    procs = [subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    done = 0
    for rc, stdout, stderr in results:
        assert rc in (0, 2) and "Traceback" not in stderr, stderr
        if rc == 2: assert "in use by another writer" in stderr
        else: done += json.loads(stdout.strip().splitlines()[-1])["done"]
    assert done == 6 and len(FeatureStore(out).manifest()) == 6


def _wait_for(cond, timeout: float = 120.0) -> None:
    t = time.monotonic()
    while not cond():
        assert time.monotonic() - t < timeout, "timed out"
        time.sleep(0.2)


def test_ctrl_c_in_features(tmp_path):
    "Issue 6: Ctrl-C gave a traceback. Now one line, exit 130, finished files kept, the same command resumes."
    src = tmp_path / "v"; src.mkdir()
    for i in range(10): make_test_video(src / f"clip{i}.mp4", seconds=2.0, fps=8, size=(96, 64))
    out = tmp_path / "store"
    cmd = [str(VTOM), "features", str(src), str(out), "--vision", "random:ViT-B-32", "--num-frames", "16", "--no-progress", "--workers", "1"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for(lambda: any(out.glob("*.safetensors")) or p.poll() is not None)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    if p.returncode == 0: pytest.skip("the run finished before the signal arrived")
    assert p.returncode == 130 and "Traceback" not in stderr, stderr
    line = [l for l in stderr.splitlines() if l.startswith("interrupted:")]
    assert len(line) == 1 and "are finished and kept" in line[0] and "rerun the same command" in line[0], stderr
    kept = FeatureStore(out).ids()
    assert kept and all(check_feature_file(out / f"{v}.safetensors") is None for v in kept)
    assert not list(out.glob(".*.tmp"))
    res = vtom("features", src, out, "--vision", "random:ViT-B-32", "--num-frames", 16, "--no-progress")
    assert res.returncode == 0 and summary(res)["skipped"] == len(kept) and summary(res)["done"] == 10 - len(kept)


def _sleepy_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("wait = 0  # seconds to sleep")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("import time\ntime.sleep(wait)\nvtom_metrics = {'waited': wait}")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def _running(run: Path) -> bool:
    try: return json.loads((run / "state.json").read_text())["stages"]["sleepy"]["status"] == "running"
    except (OSError, ValueError, KeyError): return False


def test_ctrl_c_and_kill_in_run(tmp_path):
    "Issue 6 and 7: Ctrl-C in `vtom run` (traceback before), and the old report.md left as if current after a SIGKILL."
    nb, run = _sleepy_notebook(tmp_path / "sleepy.ipynb"), tmp_path / "run"
    assert vtom("run", nb, "--out", run, "-q").returncode == 0
    assert (run / "report.md").read_text().startswith("# vtom run")
    cmd = [str(VTOM), "run", str(nb), "--out", str(run), "-q", "-p", "wait", "120"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for(lambda: _running(run))
    assert (run / "report.md").read_text().startswith("> **Not current.**"), "a new run marks the old report first"
    res = vtom("run", nb, "--out", run, "-q")   # a second run of the same folder while the first is running
    assert res.returncode == 2 and "in use by another writer" in res.stderr and "Traceback" not in res.stderr
    time.sleep(2)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines() == [l for l in stderr.strip().splitlines() if l.startswith("interrupted:")], stderr
    assert "interrupted in stage sleepy" in stderr and "rerun the same command" in stderr
    state = json.loads((run / "state.json").read_text())
    assert state["stages"]["sleepy"]["status"] == "interrupted"
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for(lambda: _running(run))
    p.kill(); p.communicate()
    assert (run / "report.md").read_text().startswith("> **Not current.**"), "a SIGKILLed run cannot leave a report that looks current"
    assert vtom("run", nb, "--out", run, "-q").returncode == 0   # the lock of the killed run is taken over
    assert not (run / "report.md").read_text().startswith("> **Not current.**")


def test_dry_run_checks_parameter_types():
    "Issue 7: `vtom run --dry-run -p num_frames abc` said ready, and the real run failed."
    res = vtom("run", "02_features", "-p", "num_frames", "abc", "--dry-run")
    assert res.returncode == 2 and "num_frames = 'abc' (str) does not fit" in res.stdout


def test_chat_empty_question(videos):
    "Issue 7: `vtom chat VIDEO ''` answered null with exit 0."
    res = vtom("chat", videos / "good0.mp4", "")
    no_traceback(res)
    assert res.returncode == 2 and "question is empty" in res.stderr


def test_default_tower_offline_fails_fast(videos, tmp_path, monkeypatch):
    "Issue 7: without HF_HUB_OFFLINE=1 the default tower retried the hub for 51 s before its clear error."
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)   # as for a user who never set HF_HUB_OFFLINE
    t = time.monotonic()
    res = vtom("features", videos / "good0.mp4", tmp_path / "store", "--no-progress")
    no_traceback(res)
    assert res.returncode == 2 and "hub cannot be reached" in res.stderr and "hf download" in res.stderr, res.stderr
    assert time.monotonic() - t < 30, "no minute of retries"


def test_no_progress_means_no_bars(videos, tower, tmp_path):
    "Issue 7: a 'Loading weights' bar printed under --no-progress (shown without it: the control)."
    import transformers
    transformers.utils.logging.enable_progress_bar()   # as in a fresh process
    res = vtom("features", videos / "good0.mp4", tmp_path / "shown", "--vision", tower, "--num-frames", 4)
    assert res.returncode == 0 and "Loading weights" in res.stderr, res.stderr
    transformers.utils.logging.enable_progress_bar()
    res = features(videos / "good0.mp4", tmp_path / "store", tower)
    assert res.returncode == 0 and "Loading weights" not in res.stderr and "it/s" not in res.stderr, res.stderr


def test_pipeline_goes_on_when_some_videos_fail(videos, tower, tmp_path):
    "A `vtom features` stage that exits 1 (done, some videos failed) is done with failures: the run goes on and says so."
    from vtom.batch import Stage
    from vtom.batch_run import run_pipeline
    stage = Stage("feats", command=("vtom", "features", str(videos), "{work}/features", "--vision", tower, "--num-frames", "4",
                                    "--no-progress"))
    m = run_pipeline([stage], tmp_path / "run", progress=False)
    assert m["status"] == "finished" and (m["stages"]["feats"]["done"], m["stages"]["feats"]["failed"]) == (2, 2)
    assert "some inputs failed" in (tmp_path / "run" / "report.md").read_text()
    assert "failed: garbage: " in next((tmp_path / "run" / "logs").glob("*feats.log")).read_text()


# ---------------------------------------------------------------------------------------------------------------------
# Issue 26: no silent wrong results, round 2. Every test below fails on the code before the fix.
# Read-only and full disks are real: a tmpfs mounted for the test (needs root, as the test machines run; skipped
# elsewhere), remounted read-only for EROFS, filled to the last pages for ENOSPC. One ENOSPC case is also simulated
# (monkeypatched write) so that it runs without root.

import contextlib
import errno
import shutil
from fractions import Fraction

import numpy as np

from vtom.decode import _test_frame, available_backends, read_counter, read_video, video_info
from vtom.features import save_features

ROOT = Path(__file__).resolve().parents[1]
QA_VAL = ROOT / "data/fixtures/siq2/qa/qa_val.json"


def strict_json(line: str):
    "json.loads that refuses NaN and Infinity, which Python's json accepts but JSON does not."
    def refuse(word): raise ValueError(f"{word} is not JSON")
    return json.loads(line, parse_constant=refuse)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "256k"):
    "A small tmpfs at `path` (real ENOSPC and, remounted read-only, real EROFS); skips the test where mounting is not allowed."
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0: pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode: pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try: yield path
    finally: subprocess.run(["umount", "-l", str(path)], capture_output=True)


def read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def fill(disk: Path, leave_pages: int) -> None:
    "Fill the tmpfs at `disk` so that exactly `leave_pages` pages stay free."
    st = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - leave_pages * st.f_frsize))


def one_line_exit_2(res, *words) -> None:
    no_traceback(res)
    err = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert res.returncode == 2 and len(err) == 1 and all(w in err[0] for w in words), (res.returncode, res.stderr)


def encode(path: Path, n: int = 10, size=(64, 48), rotation: int = 0, times=None, fps: int = 10) -> Path:
    "An H.264 mp4 of numbered frames written with PyAV: optional display rotation, optional frame times (variable frame rate)."
    import av
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = *size, "yuv420p"
        if rotation: s.set_display_rotation(rotation)
        if times is not None: s.codec_context.time_base = Fraction(1, 1000)
        for i in range(n):
            f = av.VideoFrame.from_ndarray(_test_frame(i, *size, fps, "counter"), format="rgb24")
            if times is not None: f.pts, f.time_base = int(round(times[i] * 1000)), Fraction(1, 1000)
            for p in s.encode(f): out.mux(p)
        for p in s.encode(): out.mux(p)
    return path


def qa_file(path: Path, vids: list[str], per_video: int = 1, answer=0) -> Path:
    "A Social-IQ 2.0 qa file with `per_video` questions about each video."
    rows = [{"qid": f"q_{v}_{k}", "q": "Why does the man smile?", "vid_name": v, "ts": "0.00-1.00", "a0": "He is happy.",
             "a1": "He is sad.", "a2": "He is angry.", "a3": "He is bored.", "answer_idx": answer} for v in vids for k in range(per_video)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# 1. Files the project writes never follow a link -----------------------------------------------------------------------

def test_linked_lock_file_is_refused_and_its_target_untouched(videos, tower, tmp_path):
    "Case 1: `ln -s ~/.bashrc STORE/.feature-store.lock` made `vtom features` overwrite the target with the lock's JSON."
    victim, out = tmp_path / "bashrc", tmp_path / "store"
    victim.write_text("export PATH=$PATH:~/bin\n")
    out.mkdir()
    (out / ".feature-store.lock").symlink_to(victim)
    res = features(videos / "good0.mp4", out, tower)
    one_line_exit_2(res, ".feature-store.lock", "symbolic link")
    assert victim.read_text() == "export PATH=$PATH:~/bin\n"


def test_linked_social_store_lock_is_refused(tmp_path):
    "Case 1: the social (timeline) store's lock opened its file through a link just the same."
    from vtom.social import social_to_store
    victim, store = tmp_path / "victim.txt", tmp_path / "social"
    victim.write_text("keep me\n")
    store.mkdir()
    (store / ".timeline-store.lock").symlink_to(victim)
    with pytest.raises(Exception, match="symbolic link"): social_to_store([], store)
    assert victim.read_text() == "keep me\n"


def test_linked_manifest_gets_no_line(videos, tower, tmp_path):
    "Case 1: a symlinked manifest.jsonl got a JSON line appended to its target."
    victim, out = tmp_path / "victim.txt", tmp_path / "store"
    victim.write_text("keep me\n")
    out.mkdir()
    (out / "manifest.jsonl").symlink_to(victim)
    res = features(videos / "good0.mp4", out, tower)
    one_line_exit_2(res, "manifest.jsonl", "symbolic link")
    assert victim.read_text() == "keep me\n"


def test_linked_run_log_is_refused(tmp_path):
    "Found: a `vtom run` command stage opened its log (run/logs/NN_stage.log) through a planted link and overwrote the target."
    from vtom.batch import Stage
    from vtom.batch_run import run_pipeline
    victim, run = tmp_path / "victim.txt", tmp_path / "run"
    victim.write_text("keep me\n")
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "01_echo.log").symlink_to(victim)
    with pytest.raises(Exception, match="symbolic link"):
        run_pipeline([Stage("echo", command=(sys.executable, "-c", "print('{}')"))], run, progress=False)
    assert victim.read_text() == "keep me\n"


# 2. NaN / Inf features are never results ------------------------------------------------------------------------------

def test_nan_feature_file_is_recomputed_on_resume(videos, tower, tmp_path):
    "Case 2: a feature file holding NaN was kept as done on resume."
    from vtom.features import read_meta
    src = tmp_path / "v"; src.mkdir()
    (src / "good0.mp4").symlink_to(videos / "good0.mp4")
    out = tmp_path / "store"
    assert features(src, out, tower).returncode == 0
    f = out / "good0.safetensors"
    good = load_features(f).clone()
    save_features(f, torch.full_like(good, float("nan")), read_meta(f))
    res = features(src, out, tower)
    assert res.returncode == 0 and summary(res)["done"] == 1 and "recomputing" in res.stderr, res.stderr
    assert torch.isfinite(load_features(f).float()).all() and torch.allclose(load_features(f).float(), good.float(), atol=1e-2)


def test_nan_features_make_a_failed_listed_question(tmp_path):
    "Case 2: `vtom eval --mode video` scored [NaN]*4, predicted A, said failed: 0 and wrote bare NaN into predictions.jsonl."
    store = tmp_path / "feats"
    g = torch.Generator().manual_seed(0)
    for vid, x in (("bad", torch.full((20, 48), float("nan"))), ("good", torch.randn(20, 48, generator=g))):
        save_features(store / f"{vid}.safetensors", x.half(), {"video_id": vid, "num_frames": 4})
    res = vtom("eval", "siq2", "--qa", qa_file(tmp_path / "qa.json", ["bad", "good"]), "--mode", "video", "--llm", "tiny",
               "--features", store, "--num-frames", 4, "--out", tmp_path / "m.json", "--no-progress", "--device", "cpu")
    no_traceback(res)
    assert res.returncode == 1 and "1 question(s) failed, e.g. q_bad_0" in res.stderr, res.stderr
    m = strict_json((tmp_path / "m.json").read_text())
    assert (m["n"], m["failed"]) == (1, 1) and m["failures"][0]["qid"] == "q_bad_0" and "NaN" in m["failures"][0]["error"]
    preds = [strict_json(l) for l in (tmp_path / "m.predictions.jsonl").read_text().splitlines()]
    assert [p["qid"] for p in preds] == ["q_good_0"]


def test_non_finite_scores_make_a_failed_question():
    "Case 2: a model whose scores come out NaN (an fp16 overflow) had argmax pick option A as an answer."
    from vtom.data import load_siq2
    from vtom.evaluate import EvalSetup, evaluate_questions
    from vtom.model import load_llm
    lm, tok = load_llm("tiny", device="cpu")
    with torch.no_grad(): lm.get_input_embeddings().weight[:] = float("nan")
    out = evaluate_questions(EvalSetup(lm, tok), load_siq2(QA_VAL)[:2], "text", progress=False)
    assert out["records"] == [] and len(out["failed"]) == 2 and "not finite" in out["failed"][0]["error"]


def test_nan_timeline_is_refused_where_read(tmp_path):
    "Found: a social timeline holding NaN was read and turned into NaN signal vectors for training and evaluation."
    from vtom.core import VtomError
    from vtom.social import load_timeline
    (tmp_path / "v.social.json").write_text('{"frames": [{"t": 0.0, "voice": NaN, "faces": []}], "speech": [], "words": []}')
    with pytest.raises(VtomError, match="holds NaN"): load_timeline(tmp_path, "v")


# 3. Output checked before work, results streamed; the machine's errors are one line ------------------------------------

def test_eval_checks_out_before_any_work(tmp_path, monkeypatch):
    "Case 3: --out on a read-only disk: hours of work, then a traceback (exit 3) and nothing kept. Now: at once, exit 2."
    def never(*a, **k): raise AssertionError("the model must not load before --out is known to be writable")
    monkeypatch.setattr("vtom.evaluate.load_eval_setup", never)
    with tmpfs(tmp_path / "disk") as disk:
        read_only(disk)
        res = vtom("eval", "siq2", "--qa", QA_VAL, "--llm", "tiny", "--out", disk / "m.json", "--no-progress")
        one_line_exit_2(res, str(disk / "m.json"), "Read-only file system")
        res = vtom("eval", "siq2", "--qa", QA_VAL, "--llm", "tiny", "--write-submission", disk / "sub.json", "--no-progress")
        one_line_exit_2(res, str(disk / "sub.json"), "Read-only file system")
    (tmp_path / "afolder.json").mkdir()
    one_line_exit_2(vtom("eval", "siq2", "--qa", QA_VAL, "--out", tmp_path / "afolder.json"), "is a folder")


def test_eval_full_disk_keeps_the_streamed_predictions(tmp_path):
    "Case 3: predictions were written only at the end; a full disk lost them all with a traceback. Now they stream."
    qa = tmp_path / "qa.json"
    lines = QA_VAL.read_text().splitlines()
    qa.write_text("".join(json.dumps({**json.loads(l), "qid": f"{json.loads(l)['qid']}-{k}"}) + "\n" for k in range(5) for l in lines))
    with tmpfs(tmp_path / "disk") as disk:
        fill(disk, leave_pages=2)   # one page for the --out lock, one for predictions: the disk fills mid-run
        res = vtom("eval", "siq2", "--qa", qa, "--llm", "tiny", "--out", disk / "m.json", "--no-progress", "--device", "cpu")
        one_line_exit_2(res, str(disk / "m.predictions.jsonl"), "No space left on device", "predictions finished are in")
        kept = [strict_json(l) for l in (disk / "m.predictions.jsonl").read_text().splitlines()]   # whole lines only
        assert 0 < len(kept) < 40 and f"the {len(kept)} predictions" in res.stderr and not (disk / "m.json").exists()


def test_eval_interrupted_keeps_predictions(tmp_path):
    "Case 3: Ctrl-C / SIGTERM during `vtom eval` lost every finished question. Now they are in predictions.jsonl, and it says so."
    from vtom import evaluate
    real, calls = evaluate.evaluate_question, []
    def stop_after_three(*a, **k):
        if len(calls) == 3: raise KeyboardInterrupt
        calls.append(1); return real(*a, **k)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate, "evaluate_question", stop_after_three)
        res = vtom("eval", "siq2", "--qa", QA_VAL, "--llm", "tiny", "--out", tmp_path / "m.json", "--no-progress", "--device", "cpu")
    no_traceback(res)
    assert res.returncode == 130 and "interrupted after 3 questions" in res.stderr and "m.predictions.jsonl" in res.stderr
    assert len([strict_json(l) for l in (tmp_path / "m.predictions.jsonl").read_text().splitlines()]) == 3


def test_features_read_only_disk_is_one_line(videos, tower, tmp_path):
    "Case 3: `vtom features` into a read-only file system answered with a traceback (exit 3)."
    with tmpfs(tmp_path / "disk") as disk:
        read_only(disk)
        one_line_exit_2(features(videos / "good0.mp4", disk / "store", tower), str(disk / "store"), "Read-only file system")


def test_features_full_disk_is_one_line_and_the_store_stays_whole(videos, tower, tmp_path):
    "Case 3: `vtom features` on a full disk answered with a traceback. Now one line naming the file; finished videos stay done."
    src = tmp_path / "v"; src.mkdir()
    (src / "good0.mp4").symlink_to(videos / "good0.mp4")
    with tmpfs(tmp_path / "disk") as disk:
        out = disk / "store"
        assert features(src, out, tower).returncode == 0
        (src / "good1.mp4").symlink_to(videos / "good1.mp4")
        fill(disk, leave_pages=1)   # the lock file takes the last page: the feature file cannot be written
        one_line_exit_2(features(src, out, tower), str(out / "good1.safetensors"), "No space left on device")
        assert FeatureStore(out).ids() == ["good0"] and [r["video_id"] for r in FeatureStore(out).manifest()] == ["good0"]
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name.endswith(".new")]
        (disk / "filler").unlink()
        res = features(src, out, tower)
        assert res.returncode == 0 and (summary(res)["done"], summary(res)["skipped"]) == (1, 1)


def test_full_disk_simulated_is_one_line(videos, tower, tmp_path, monkeypatch):
    "Case 3 without root: the feature file's write raises ENOSPC (monkeypatched); one line, exit 2, nothing half-written kept."
    real = Path.write_bytes
    def full(self, data):
        if self.name.startswith(".good0.safetensors"): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)
    monkeypatch.setattr(Path, "write_bytes", full)
    out = tmp_path / "store"
    one_line_exit_2(features(videos / "good0.mp4", out, tower), str(out / "good0.safetensors"), "No space left on device")
    assert FeatureStore(out).ids() == [] and not list(out.glob(".*.tmp"))


# 4. Inputs that were silently wrong -----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("deg", [90, -90, 180])
def test_rotated_video_comes_out_upright(tmp_path, backend, deg):
    "Case 4: a video with a display matrix (phones' portrait video) was stored sideways (PyAV) or failed as corrupt (decord)."
    if backend not in available_backends(): pytest.skip(f"{backend} not installed")
    path = encode(tmp_path / "rot.mp4", rotation=deg)
    clip = read_video(path, num_frames=4, backend=backend)
    upright = (64, 48) if deg % 180 else (48, 64)
    assert clip.frames.shape[1:3] == upright and (video_info(path)["height"], video_info(path)["width"]) == upright
    assert [read_counter(np.rot90(f, -deg // 90)) for f in clip.frames] == clip.indices.tolist()   # the right frames, turned
    if shutil.which("ffmpeg"):   # the pixels FFmpeg's own player shows (it applies the display matrix)
        raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                             capture_output=True, check=True).stdout
        first = read_video(path, indices=[0], backend=backend).frames[0]
        assert np.abs(np.frombuffer(raw, np.uint8).reshape(first.shape).astype(int) - first).mean() < 1.0


def test_variable_frame_rate_timestamps_are_the_files(tmp_path):
    "Case 4: at a variable frame rate, timestamps were index / average fps, off by up to 0.11 s (here more)."
    times = np.cumsum([0.0] + [0.04, 0.2, 0.04, 0.12] * 5)[:20]
    path = encode(tmp_path / "vfr.mp4", n=20, times=times)
    clip = read_video(path, num_frames=10)
    assert [read_counter(f) for f in clip.frames] == clip.indices.tolist()
    assert np.abs(clip.timestamps - times[clip.indices]).max() < 1e-3, (clip.timestamps, times[clip.indices])
    win = read_video(path, window=(0.5, 1.0), num_frames=20)   # the frames on screen in that window, by their real times
    assert times[win.indices].min() <= 0.5 + 1e-6 and times[win.indices].max() < 1.0 and win.indices[0] == int((times <= 0.5).sum()) - 1


def test_png_named_mp4_is_not_a_video(tower, tmp_path):
    "Case 4: a PNG named .mp4 was accepted as a 1-frame video."
    from PIL import Image
    src = tmp_path / "v"; src.mkdir()
    Image.fromarray(_test_frame(0, 64, 48, 10, "counter")).save(src / "photo.mp4", format="PNG")
    res = features(src, tmp_path / "store", tower)
    no_traceback(res)
    assert res.returncode == 1 and "failed: photo: " in res.stderr and "still image (png), not a video" in res.stderr, res.stderr


def test_num_frames_far_beyond_the_video(videos, tower, tmp_path):
    "Case 4: `--num-frames 100000` on a short clip wrote a file of padding with no warning. Now refused; padding is said."
    res = features(videos / "good0.mp4", tmp_path / "store", tower, "--num-frames", 100000)
    one_line_exit_2(res, "--num-frames 100000", "4096")
    assert not (tmp_path / "store").exists()
    res = features(videos / "good0.mp4", tmp_path / "store2", tower, "--num-frames", 16)   # an 8-frame clip
    assert res.returncode == 0 and summary(res)["padded"] == 1
    assert "1 of 1 new videos have fewer frames than --num-frames 16 (fewest: 8 in good0)" in res.stderr, res.stderr


@pytest.mark.parametrize("bad", ["0", "-1"])
def test_workers_must_be_positive(videos, tower, tmp_path, bad):
    "Case 4: `vtom features --workers 0` / `-1` were accepted."
    res = features(videos / "good0.mp4", tmp_path / "store", tower, "--workers", bad)
    assert res.returncode == 2 and "--workers: must be at least 1" in res.stderr and not (tmp_path / "store").exists()


@pytest.mark.parametrize("args, says", [(["--num-frames", "0"], "--num-frames: must be at least 1"),
                                        (["--temperature", "-1"], "--temperature: must be a finite number >= 0"),
                                        (["--temperature", "nan"], "--temperature: must be a finite number >= 0"),
                                        (["--max-new-tokens", "-1"], "--max-new-tokens: must be at least 1")])
def test_chat_numbers(videos, args, says):
    "Case 4: `vtom chat --num-frames 0` reported 100, `--temperature -1`/`nan` was silently greedy, `--max-new-tokens -1` a traceback."
    res = vtom("chat", videos / "good0.mp4", "How does he feel?", "--json", "--llm", "tiny", "--vision", "thumbnail:7", *args)
    no_traceback(res)
    assert res.returncode == 2 and says in res.stderr, res.stderr


def test_qa_file_not_utf8(tmp_path):
    "Case 4: a qa file with a non-UTF-8 byte gave a traceback."
    qa = tmp_path / "qa.json"
    qa.write_bytes(QA_VAL.read_bytes().splitlines(keepends=True)[0] + '{"qid": "x", "q": "caf\xe9?"}\n'.encode("latin-1"))
    one_line_exit_2(vtom("eval", "siq2", "--qa", qa, "--llm", "tiny"), f"{qa}:2: not UTF-8", "0xe9")


@pytest.mark.parametrize("answer", [True, 1.0])
def test_answer_idx_must_be_a_whole_number(tmp_path, answer):
    "Case 4: `answer_idx: true` counted as 1 (and 1.0 too)."
    qa = qa_file(tmp_path / "qa.json", ["v"], answer=answer)
    one_line_exit_2(vtom("eval", "siq2", "--qa", qa, "--mode", "longest-option"), "answer_idx must be 0-3", f"got {answer}")


# 5. One writer per --out ----------------------------------------------------------------------------------------------

def test_second_eval_on_one_out_stops(tmp_path):
    "Case 5: two `vtom eval` runs with one --out raced, the last writer silently won."
    out = tmp_path / "m.json"
    with FolderLock(tmp_path, "eval-m.json"):   # what a running `vtom eval --out m.json` holds
        res = vtom("eval", "siq2", "--qa", QA_VAL, "--mode", "longest-option", "--out", out, "--no-progress")
    one_line_exit_2(res, f"{out} is in use by another writer", f"pid {os.getpid()}", "write to another file")
    assert not out.exists() and not out.with_suffix(".predictions.jsonl").exists()


def test_two_evals_at_once_never_both_write(tmp_path):
    "Case 5, two real processes on one --out: each either writes a whole, consistent result or stops at once with exit 2."
    qa = tmp_path / "qa.json"
    lines = QA_VAL.read_text().splitlines()
    qa.write_text("".join(json.dumps({**json.loads(l), "qid": f"{json.loads(l)['qid']}-{k}", "vid_name": f"v{k}"}) + "\n"
                          for k in range(10) for l in lines))
    out = tmp_path / "m.json"
    cmd = [str(VTOM), "eval", "siq2", "--qa", str(qa), "--llm", "tiny", "--device", "cpu", "--out", str(out), "--no-progress"]
    procs = [subprocess.Popen(cmd + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for extra in ([], ["--limit", "16"])]   # two runs that differ: a mix of their files would show
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    for rc, _, stderr in results:
        assert rc in (0, 2) and "Traceback" not in stderr, stderr
        if rc == 2: assert "in use by another writer" in stderr
    m, preds = strict_json(out.read_text()), [strict_json(l) for l in out.with_suffix(".predictions.jsonl").read_text().splitlines()]
    assert len(preds) == m["n"] == len({p["qid"] for p in preds}) and m["n"] in (16, 80)   # one run's predictions, once each


# 6. `vtom run -p` paths are the user's --------------------------------------------------------------------------------

def test_run_relative_path_is_taken_from_the_current_folder(monkeypatch):
    "Case 6: `vtom run gpu-tomloc --dry-run -p siq2_dir data/fixtures/siq2` from the repository root said nbs/data/... does not exist."
    monkeypatch.chdir(ROOT)
    res = vtom("run", "gpu-tomloc", "--dry-run", "-p", "siq2_dir", "data/fixtures/siq2")
    assert "siq2_dir" not in res.stdout and "nbs/data" not in res.stdout, res.stdout
    res = vtom("run", "gpu-tomloc", "--dry-run", "-p", "siq2_dir", "data/no-such-folder")
    assert f"{ROOT}/data/no-such-folder does not exist" in res.stdout, res.stdout


# 7. SIGTERM ends like Ctrl-C ------------------------------------------------------------------------------------------

def test_sigterm_in_features(tmp_path):
    "Case 7: SIGTERM exited 143 with no message; every store kept a `.settings.json.new` hard link."
    src = tmp_path / "v"; src.mkdir()
    for i in range(10): make_test_video(src / f"clip{i}.mp4", seconds=2.0, fps=8, size=(96, 64))
    out = tmp_path / "store"
    cmd = [str(VTOM), "features", str(src), str(out), "--vision", "random:ViT-B-32", "--num-frames", "16", "--no-progress", "--workers", "1"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for(lambda: any(out.glob("*.safetensors")) or p.poll() is not None)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=120)
    if p.returncode == 0: pytest.skip("the run finished before the signal arrived")
    assert p.returncode == 143 and "Traceback" not in stderr, stderr
    line = [l for l in stderr.splitlines() if l.startswith("terminated:")]
    assert len(line) == 1 and "are finished and kept" in line[0] and "rerun the same command" in line[0], stderr
    kept = FeatureStore(out).ids()
    assert kept and all(check_feature_file(out / f"{v}.safetensors") is None for v in kept)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [], "no lock, temporary file or .settings.json.new left"
    res = vtom("features", src, out, "--vision", "random:ViT-B-32", "--num-frames", 16, "--no-progress")
    assert res.returncode == 0 and summary(res)["skipped"] == len(kept) and summary(res)["done"] == 10 - len(kept)
    assert not (out / ".settings.json.new").exists()
