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
    from vtom.batch import Stage, run_pipeline
    stage = Stage("feats", command=("vtom", "features", str(videos), "{work}/features", "--vision", tower, "--num-frames", "4",
                                    "--no-progress"))
    m = run_pipeline([stage], tmp_path / "run", progress=False)
    assert m["status"] == "finished" and (m["stages"]["feats"]["done"], m["stages"]["feats"]["failed"]) == (2, 2)
    assert "some inputs failed" in (tmp_path / "run" / "report.md").read_text()
    assert "failed: garbage: " in next((tmp_path / "run" / "logs").glob("*feats.log")).read_text()
