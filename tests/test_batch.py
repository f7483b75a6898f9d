"""vtom.batch, vtom.batch_run: papermill pipelines on throwaway notebooks (failure + resume), parameter checks, the shipped presets."""
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from vtom import batch, batch_run
from vtom.core import FolderLock, VtomError
from vtom.batch import PRESETS, PIPELINES, PipelineError, Stage, check_pipeline, notebook_parameters, resolve_parameters
from vtom.batch_run import StageFailed, prepare_notebook, run_pipeline

VTOM = Path(sys.executable).parent / "vtom"


def _notebook(path: Path, params: str, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    first = nbformat.v4.new_code_cell(params)
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def toy(tmp_path):
    "Two stage notebooks: `make` counts its runs, plots and writes numbers; `check` fails until a flag file exists."
    d = tmp_path / "nbs"
    d.mkdir()
    make = _notebook(d / "01_make.ipynb", "n = 5  # how many numbers (it's small)\nout: str = 'numbers.txt'\ncounter = 'count.txt'",
                     "open(counter, 'a').write('x')\nxs = list(range(n))\nopen(out, 'w').write(' '.join(map(str, xs)))",
                     "import matplotlib\nmatplotlib.use('agg')\nimport matplotlib.pyplot as plt\nfrom IPython.display import Image, display\n"
                     "plt.plot(xs); plt.savefig('p.png'); display(Image('p.png'))",
                     "import numpy as np\nvtom_metrics = {'n': n, 'total': np.int64(sum(xs))}",
                     "#| gpu\nraise RuntimeError('gpu cells are left out on CPU presets')")
    check = _notebook(d / "02_check.ipynb", "numbers = 'numbers.txt'\nflag = None",
                      "import os\nassert flag is None or os.path.exists(flag), f'{flag} is missing'",
                      "values = [int(v) for v in open(numbers).read().split()]\nsummary = {'mean': sum(values) / len(values)}")
    stages = [Stage("make", str(make), parameters={"out": "{work}/numbers.txt", "counter": "{work}/count.txt"}, metrics={"last": "xs[-1]"}),
              Stage("check", str(check), parameters={"numbers": "{work}/numbers.txt", "flag": str(tmp_path / "flag")},
                    metrics={"mean": "summary['mean']", "broken": "summary['nope']"})]
    return tmp_path, stages


def test_pipeline_fails_then_resumes(toy):
    tmp, stages = toy
    run = tmp / "run"
    with pytest.raises(StageFailed, match=r"stage 'check' failed .*flag is missing"):
        run_pipeline(stages, run, parameters={"n": 4}, progress=False)
    state = json.loads((run / "state.json").read_text())
    assert state["stages"]["make"]["status"] == "done" and state["stages"]["check"]["status"] == "failed"
    failed_nb = nbformat.read(run / "notebooks" / "02_check.ipynb", as_version=4)
    assert any(o.get("output_type") == "error" for c in failed_nb.cells for o in c.get("outputs", []))
    report = (run / "report.md").read_text()
    assert "**failed**" in report and "Stage `check` failed" in report and "AssertionError" in report
    assert json.loads((run / "metrics.json").read_text())["status"] == "failed"

    (tmp / "flag").write_text("ok")
    metrics = run_pipeline(stages, run, parameters={"n": 4}, progress=False)
    assert (run / "work" / "count.txt").read_text() == "x", "the finished stage ran again"
    assert metrics["status"] == "finished"
    assert metrics["stages"] == {"make": {"n": 4, "total": 6, "last": 3}, "check": {"mean": 1.5, "broken": None}}
    assert set(metrics["timings_s"]) == {"make", "check"}
    assert [p.name for p in (run / "figures").iterdir()] == ["01_make_1.png"]
    assert (run / "figures" / "01_make_1.png").read_bytes()[:4] == b"\x89PNG"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["stages"][0]["parameters"] == {"n": 4, "out": str(run / "work" / "numbers.txt"), "counter": str(run / "work" / "count.txt")}
    env = json.loads((run / "environment.json").read_text())
    assert "git_commit" in env and env["versions"]["papermill"]
    report = (run / "report.md").read_text()
    assert "**finished**" in report and "| total | 6 |" in report and "![make: 01_make_1](figures/01_make_1.png)" in report

    # a changed parameter reruns that stage and everything after it; --from reruns from a stage
    run_pipeline(stages, run, parameters={"n": 2}, progress=False)
    assert (run / "work" / "count.txt").read_text() == "xx"
    m = run_pipeline(stages, run, parameters={"n": 2}, from_stage="check", progress=False)
    assert (run / "work" / "count.txt").read_text() == "xx" and m["stages"]["check"]["mean"] == 0.5


def test_preset_flags_per_stage_and_command_stages(tmp_path):
    nb = _notebook(tmp_path / "slowish.ipynb", "marker = 'm.txt'", "#| slow\nopen(marker, 'w').write('slow cell ran')")
    stages = [Stage("a", str(nb), parameters={"marker": "{work}/a.txt"}), Stage("b", str(nb), parameters={"marker": "{work}/b.txt"}),
              Stage("count", command=("python", "-c", "import json; print(json.dumps({'n': {n}, 'seen': '{work}'}))"), parameters={"n": 1})]
    preset = batch.Preset("p", "none", "test preset", parameters={"n": 2}, skip_flags=("gpu", "slow"), stage_skip_flags={"b": ("gpu",)})
    m = run_pipeline(stages, tmp_path / "run", preset=preset, progress=False)
    assert not (tmp_path / "run" / "work" / "a.txt").exists() and (tmp_path / "run" / "work" / "b.txt").exists()
    assert m["stages"]["count"] == {"n": 2, "seen": str(tmp_path / "run" / "work")}
    assert (tmp_path / "run" / "logs" / "03_count.log").is_file()
    assert "03_count.log" in (tmp_path / "run" / "report.md").read_text()


def test_parameter_names_are_checked(toy):
    tmp, stages = toy
    with pytest.raises(PipelineError, match=r"stage 'check': notebook 02_check.ipynb has no parameter 'nope'"):
        resolve_parameters(stages, tmp / "run", overrides={"check.nope": 1})
    with pytest.raises(PipelineError, match=r"'typo' is declared by none"):
        resolve_parameters(stages, tmp / "run", overrides={"typo": 1})
    with pytest.raises(PipelineError, match=r"stage 'nostage', which is not in the pipeline"):
        resolve_parameters(stages, tmp / "run", overrides={"nostage.n": 1})
    # a common parameter goes only to the stages declaring it
    got = resolve_parameters(stages, tmp / "run", overrides={"n": 9})
    assert got["make"]["n"] == 9 and "n" not in got["check"]


def test_notebook_parameters_parsed_without_running(toy):
    tmp, stages = toy
    params = notebook_parameters(stages[0].notebook)
    assert list(params) == ["n", "out", "counter"]
    assert params["n"]["default"] == 5 and params["n"]["help"] == "how many numbers (it's small)"
    assert params["out"]["default"] == "numbers.txt"


def test_prepare_notebook_leaves_out_cells(tmp_path):
    path = _notebook(tmp_path / "x.ipynb", "a = 1", "#| slow\nheavy()", "#| eval: false\nnever()", "#| gpu\ncuda()",
                     "from nbdev import nbdev_export\nnbdev_export" + "()", "b = 2")
    nb, skipped = prepare_notebook(nbformat.read(path, as_version=4), tmp_path / "m.json", {"b": "b"}, skip_flags=("gpu",))
    assert skipped == [2, 3, 4]
    assert nb.cells[1].source == "#| slow\nheavy()" and nb.cells[2].cell_type == "markdown"
    assert nb.cells[-1].metadata["tags"] == ["vtom-collect"]
    nbformat.validate(nb)


def test_collect_metrics_converts_arrays_and_tensors(tmp_path):
    ns = {"vtom_metrics": {"a": np.float64(0.25), "t": torch.tensor([1.0, 2.0]), "nan": float("nan")}, "x": torch.tensor(3)}
    got = batch_run._collect_metrics(ns, {"x": "x", "bad": "undefined_name"}, str(tmp_path / "m.json"))
    assert json.loads((tmp_path / "m.json").read_text()) == got
    assert got.pop("_resources")["cpu_s"] > 0
    assert "vtom.batch" in got.pop("_vtom_modules")
    assert got == {"a": 0.25, "t": [1.0, 2.0], "nan": "nan", "x": 3, "bad": None}


def test_cli_runs_a_notebook_and_reports_failure(toy):
    tmp, stages = toy
    out = tmp / "cli-run"
    res = subprocess.run([VTOM, "run", stages[0].notebook, "-p", "n", "3", "-p", "out", str(tmp / "nums.txt"),
                          "-p", "counter", str(tmp / "c.txt"), "--out", str(out), "-q"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "metrics.json").read_text())["stages"]["make"] == {"n": 3, "total": 3}
    res = subprocess.run([VTOM, "run", stages[1].notebook, "-p", "numbers", str(tmp / "nums.txt"), "-p", "flag", "/nonexistent",
                          "--out", str(tmp / "cli-fail"), "-q"], capture_output=True, text=True)
    assert res.returncode == 1 and "stage 'check' failed" in res.stderr and "resume" in res.stderr
    res = subprocess.run([VTOM, "run", stages[1].notebook, "-p", "nope", "1", "--dry-run"], capture_output=True, text=True)
    assert res.returncode == 2 and "'nope' is declared by none" in res.stdout and "numbers, flag" in res.stdout


def test_shipped_presets_only_name_parameters_the_notebooks_have():
    "Fails loudly when a stage notebook renames or drops a parameter a preset or pipeline sets."
    assert {"cpu-demo", "gpu-siq2"} <= set(PRESETS)
    for name, preset in PRESETS.items():
        problems = check_pipeline(PIPELINES[preset.pipeline], preset)
        errors = [p["message"] for p in problems if p["level"] == "error"]
        assert not errors, f"preset {name}: " + "\n".join(errors)


def test_cpu_demo_dry_run_is_clean_offline():
    res = subprocess.run([VTOM, "run", "cpu-demo", "--dry-run"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK, ready to run" in res.stdout


def test_gpu_siq2_dry_run_lists_what_is_missing(tmp_path):
    "Offline, without the data: only `missing` problems (data, weights), each saying how to get it; no errors."
    res = subprocess.run([VTOM, "run", "gpu-siq2", "-p", "siq2_dir", str(tmp_path / "siq2"), "--dry-run"],
                         capture_output=True, text=True)
    assert res.returncode == 1, res.stdout + res.stderr
    body = res.stdout.split("dry run:")[0]
    assert "  error" not in body and "missing [data, siq2-features" in body and "] siq2_dir = " in body
    assert "hf download openai/clip-vit-large-patch14" in body
    assert "how to fix: Social-IQ 2.0 is downloaded by the user" in body


def test_gpu_siq2_dry_run_passes_when_everything_is_there(tmp_path):
    "The same preset with the data and (stand-in) model folders present: ready to run, nothing loaded."
    siq2 = tmp_path / "siq2"
    (siq2 / "qa").mkdir(parents=True)
    (siq2 / "video").mkdir()
    for split in ("train", "val", "test"): (siq2 / "qa" / f"qa_{split}.json").write_text("")
    for name in ("clip", "lm"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    res = subprocess.run([VTOM, "run", "gpu-siq2", "-p", "siq2_dir", str(siq2), "-p", "vision", f"hf:{tmp_path / 'clip'}",
                          "-p", "llm", str(tmp_path / "lm"), "--dry-run"], capture_output=True, text=True)
    assert res.returncode == 0 and "OK, ready to run" in res.stdout, res.stdout + res.stderr


def test_list():
    res = subprocess.run([VTOM, "run", "--list"], capture_output=True, text=True, check=True)
    assert "cpu-demo" in res.stdout and "gpu-siq2" in res.stdout


def test_run_folder_lock(tmp_path):
    stages = [Stage("hello", command=("python", "-c", "print('{\"ok\": 1}')"))]
    with FolderLock(tmp_path / "run", "run"):  # another writer holds the folder
        with pytest.raises(VtomError, match="in use by another writer"):
            run_pipeline(stages, tmp_path / "run", progress=False)
    (tmp_path / "run" / ".run.lock").write_text('{"pid": 999999999}')  # left by a killed run: taken over
    assert run_pipeline(stages, tmp_path / "run", progress=False)["stages"]["hello"] == {"ok": 1}
    assert not (tmp_path / "run" / ".run.lock").exists()


def test_dry_run_reports_type_errors():
    "`-p num_frames abc` is found by the dry run (exit 2), not by the real run an hour later."
    res = subprocess.run([VTOM, "run", "02_features", "-p", "num_frames", "abc", "--dry-run"], capture_output=True, text=True)
    assert res.returncode == 2 and "num_frames = 'abc' (str) does not fit" in res.stdout, res.stdout + res.stderr
    res = subprocess.run([VTOM, "run", "02_features", "-p", "num_frames", "8", "--dry-run"], capture_output=True, text=True)
    assert "does not fit" not in res.stdout, res.stdout


def test_resume_follows_depends_and_cleans_stale_outputs(tmp_path):
    "Only stages downstream of a changed stage run again; a stale stage's `clean` outputs are deleted first."
    def append(name):  # a command stage that appends one character to {work}/NAME and reports the file's length
        code = f"import json, pathlib; p = pathlib.Path('{{work}}/{name}'); p.write_text((p.read_text() if p.exists() else '') + 'x'); print(json.dumps({{'len': len(p.read_text()), 'v': {{v}}}}))"
        return ("python", "-c", code)
    stages = [Stage("a", command=append("a"), parameters={"v": 1}, depends=()),
              Stage("b", command=append("b"), parameters={"v": 1}, depends=(), clean=("{work}/b",)),
              Stage("c", command=append("c"), parameters={"v": 1}, depends=("b",))]
    run = tmp_path / "run"
    run_pipeline(stages, run, progress=False)
    m = run_pipeline(stages, run, parameters={"a.v": 2}, progress=False)      # a changed: only a runs
    assert [m["stages"][n]["len"] for n in "abc"] == [2, 1, 1]
    m = run_pipeline(stages, run, parameters={"a.v": 2, "b.v": 2}, progress=False)  # b changed: b (cleaned) and c run
    assert [m["stages"][n]["len"] for n in "abc"] == [2, 1, 2] and m["stages"]["b"]["v"] == 2
    with pytest.raises(PipelineError, match="not inside the run folder"):
        batch_run.clean_outputs(Stage("x", command=("true",), clean=(str(tmp_path),)), {}, run)
    bad = [Stage("a", command=("true",), depends=("z",))]
    assert any("depends on 'z'" in p["message"] for p in check_pipeline(bad))


def test_pipelines_and_presets_are_data_files_checked_on_load(tmp_path):
    "Every shipped pipeline/preset is one packaged YAML file; a broken file names itself and what is allowed."
    root = batch.package_dir()
    assert sorted(p.stem for p in (root / "pipelines").glob("*.yaml")) == sorted(PIPELINES) == ["siq2", "tom", "tom-mind", "tom-temporal", "tomloc"]
    assert sorted(p.stem for p in (root / "presets").glob("*.yaml")) == sorted(PRESETS) == ["cpu-demo", "gpu-siq2", "gpu-tomloc", "tom-mind", "tom-temporal"]
    assert "presets/*.yaml" in (root.parent / "setup.py").read_text()
    evals = [s for s in PIPELINES["siq2"] if s.name.startswith("eval-") and s.name != "eval-plot"]   # one `for:` entry, five stages
    assert [s.command[s.command.index("--mode") + 1] for s in evals] == ["video", "shuffled", "blank", "text", "answer-only"]
    assert all(s.inputs == ("siq2_dir",) and s.depends == ("siq2-features", "train") for s in evals)
    assert PIPELINES["tom"][0].depends == () and PIPELINES["tom"][0].metrics["frames"] == "len(clip)"
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "presets").mkdir()
    def load(pipeline: str, preset: str = "") -> None:
        (tmp_path / "pipelines" / "p.yaml").write_text(pipeline)
        (tmp_path / "presets" / "q.yaml").write_text(preset) if preset else (tmp_path / "presets" / "q.yaml").unlink(missing_ok=True)
        batch.load_definitions(tmp_path)
    cases = [("stages:\n  - {name: a, notebok: 00_core}\n", "", r"p\.yaml: stage 'a' has unknown key\(s\) notebok; allowed: .*notebook"),
             ("stages:\n  - {name: a}\n", "", r"p\.yaml: stage 'a' needs exactly one of `notebook:`"),
             ("stages:\n  - {name: a, notebook: 99_nothing}\n", "", r"p\.yaml: stage 'a': No notebook '99_nothing'"),
             ("stages:\n  - {name: a, command: [true], depends: [b]}\n  - {name: b, command: [true]}\n", "", r"depends on \['b'\]"),
             ("stages:\n  - {name: 'x-{k}', command: [true], for: [{k: 1}, {k: 1}]}\n", "", r"two stages are named 'x-1'"),
             ("stages: [\n", "", r"p\.yaml is not valid YAML"),
             ("stages:\n  - {name: a, command: [true]}\n", "pipeline: p\ndescription: d\nstages: {b: {n: 1}}\n", r"q\.yaml: `stages:` names stage\(s\) \['b'\]"),
             ("stages:\n  - {name: a, command: [true]}\n", "pipeline: nope\ndescription: d\n", r"q\.yaml: no pipeline 'nope'"),
             ("stages:\n  - {name: a, command: [true]}\n", "pipeline: p\ndescription: d\nskip: [gpu]\n", r"q\.yaml: the preset has unknown key\(s\) skip")]
    for pipeline, preset, error in cases:
        with pytest.raises(PipelineError, match=error): load(pipeline, preset)
    load("stages:\n  - {name: a, command: [true]}\n", "pipeline: p\ndescription: d\nstages: {a: {n: 1}}\n")


def test_editing_the_vtom_code_a_command_ran_reruns_it(tmp_path, monkeypatch):
    "A cached `vtom features` stage runs again after vtom/features.py changes, not after a module it never loaded does."
    import shutil
    stages = [Stage("feats", command=("vtom", "features", "--help"), depends=())]
    run, log = tmp_path / "run", tmp_path / "run" / "logs" / "01_feats.log"
    run_pipeline(stages, run, progress=False)
    code = json.loads((run / "state.json").read_text())["stages"]["feats"]["code"]
    assert {"vtom.cli", "vtom.core", "vtom.features"} <= set(code) and "vtom.batch" not in code and "vtom.demo" not in code
    copy = tmp_path / "vtom"
    shutil.copytree(batch.package_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(batch_run, "package_dir", lambda: copy)   # an edited checkout, as far as the fingerprints can see
    made = log.stat().st_mtime_ns
    run_pipeline(stages, run, progress=False)
    (copy / "demo.py").write_text((copy / "demo.py").read_text() + "\n# edited\n")
    run_pipeline(stages, run, progress=False)
    assert log.stat().st_mtime_ns == made, "nothing the stage ran changed: it must not run again"
    (copy / "features.py").write_text((copy / "features.py").read_text() + "\n# edited\n")
    assert batch_run.changed_code(code) == ["vtom.features"]
    run_pipeline(stages, run, progress=False)
    assert log.stat().st_mtime_ns != made
    assert not batch_run.changed_code(json.loads((run / "state.json").read_text())["stages"]["feats"]["code"])


def test_dry_run_names_a_metric_typo(toy):
    tmp, stages = toy
    typo = [Stage("check", stages[1].notebook, parameters=stages[1].parameters, metrics={"mean": "sumary['mean']", "v": "sorted(values)[0]"})]
    msgs = [p["message"] for p in check_pipeline(typo) if p["level"] == "error"]
    assert msgs == ["metric 'mean' = \"sumary['mean']\" uses 'sumary', which notebook 02_check.ipynb never defines (did you mean 'summary'?)"]
    assert not check_pipeline(stages)   # summary, xs, ... exist; `summary['nope']` fails only when run (a None, not an error)
    star = _notebook(tmp / "star.ipynb", "a = 1", "from math import *")
    assert not batch.metric_problems(Stage("s", str(star), metrics={"x": "pi + anything"}))   # a star import: cannot tell
    cmd = Stage("c", command=("python", "-c", "print(1)"), metrics={"ok": "out['n']", "bad": "outt['n']"})
    assert [m.split(" uses ")[1] for m in batch.metric_problems(cmd)] == ["'outt', which the command's JSON line `out` never defines (did you mean 'out'?)"]


def test_model_names_come_from_one_registry(tmp_path):
    "The dry run, `load_llm` and `vtom train --help` ask `vtom.registry.LLMS`; an unknown name is one error listing the choices."
    from vtom.model import ModelLoadError, resolve_llm
    from vtom.registry import LLMS, UnknownModelName, list_llms
    assert list_llms() == ["embedded", "tiny", "./path/to/model", "hf:ORG/NAME"]
    assert batch.check_model("tiny", "llm") is None and batch.check_model("embedded", "llm") is None
    assert "hf download nobody/nothing" in batch.check_model("nobody/nothing", "llm")
    (tmp_path / "lm").mkdir()
    assert "no config.json" in batch.check_model(str(tmp_path / "lm"), "llm")
    (tmp_path / "lm" / "config.json").write_text("{}")
    assert batch.check_model(str(tmp_path / "lm"), "llm") is None and resolve_llm(f"hf:{tmp_path / 'lm'}") == str(tmp_path / "lm")
    with pytest.raises(UnknownModelName, match=r"Unknown language model 'gpt-7'; use one of: embedded \("): batch.check_model("gpt-7", "llm")
    with pytest.raises(ModelLoadError, match=r"Unknown language model 'gpt-7'.*hf:ORG/NAME"): resolve_llm("gpt-7")
    with pytest.raises(UnknownModelName, match="Unknown vision tower 'foo:bar'; use one of hf:"): batch.check_model("foo:bar")
    res = subprocess.run([VTOM, "run", "cpu-demo", "-p", "llm", "gpt-7", "--dry-run"], capture_output=True, text=True)
    assert res.returncode == 2 and "  error   [train, " in res.stdout and "llm = gpt-7: Unknown language model 'gpt-7'" in res.stdout
    res = subprocess.run([VTOM, "train", "--help"], capture_output=True, text=True)
    assert "tiny (a random 2-layer Llama" in " ".join(res.stdout.split()) and LLMS.choices().startswith("embedded (")


def test_command_stage_resources_are_its_own_and_timeouts_stop_it(tmp_path):
    "A `vtom` command stage reports its own peak memory (not the largest child of the run so far), every command its CPU seconds."
    big = ("python", "-c", "import json, numpy as np; x = np.ones(1024 * 2**20 // 8); print(json.dumps({'n': int(x.sum())}))")
    run_pipeline([Stage("big", command=big), Stage("info", command=("vtom", "info", "--no-llm"))], tmp_path / "run", progress=False)
    st = json.loads((tmp_path / "run" / "state.json").read_text())["stages"]
    assert "peak_rss_mb" not in st["big"]["resources"] and st["big"]["resources"]["cpu_s"] >= 0   # not a vtom command: unknown
    assert 1 < st["info"]["resources"]["peak_rss_mb"] < 1024 and "vtom.core" in st["info"]["code"]
    slow = [Stage("slow", command=("python", "-c", "import time; time.sleep(30)"))]
    t = __import__("time").time()
    with pytest.raises(StageFailed, match="TimeoutExpired"):
        run_pipeline(slow, tmp_path / "run2", timeout=1, progress=False)
    assert __import__("time").time() - t < 20
