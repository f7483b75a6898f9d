"""vtom.bench: `vtom doctor` and the GPU check (`vtom doctor --gpu`, `make gpu-check`) at toy sizes on the CPU."""
import json
import subprocess
import sys
from pathlib import Path

import torch

from vtom.bench import LLAMA_TOY, PRESET_NEEDS, bench_lm_train, fitting_presets, machine_report, try_import

ROOT = Path(__file__).resolve().parents[1]


def test_doctor_lists_machine_and_presets(capsys):
    from vtom.cli import main
    assert main(["doctor"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert {"cuda", "gpus", "cpu", "ram_gib", "packages"} <= rep["machine"].keys()
    assert set(rep["machine"]["packages"]) >= {"decord", "torchcodec", "flash_attn"}
    assert set(rep["presets"]) == set(PRESET_NEEDS)
    if not torch.cuda.is_available(): assert "a CUDA GPU" in rep["presets"]["gpu-tomloc"]["missing"]


def test_every_preset_has_its_needs():
    from vtom.batch import PRESETS
    assert set(PRESETS) <= set(PRESET_NEEDS), f"add {set(PRESETS) - set(PRESET_NEEDS)} to vtom.bench.PRESET_NEEDS"


def test_fitting_presets_by_hand():
    rep = {"cuda": True, "gpus": [{"total_gib": 80.0}], "ram_gib": {"total": 64.0},
           "packages": {p: {"ok": True} for p in ("av", "open_clip", "transformers", "peft", "papermill")}}
    assert all(v["fits"] for v in fitting_presets(rep).values())
    small = {**rep, "gpus": [{"total_gib": 16.0}], "packages": {**rep["packages"], "av": {"ok": False, "error": "ImportError: x"}}}
    fit = fitting_presets(small)
    assert fit["gpu-siq2"]["missing"] == ["a GPU with >= 24 GiB", "package av (ImportError: x)"] and not fit["cpu-demo"]["fits"]
    assert try_import("json")["ok"] and not try_import("vtom_no_such_module")["ok"]


def test_lm_train_bench_toy_frozen_lm():
    rec = bench_lm_train(LLAMA_TOY, "cpu", "fp32", batch_size=2, video_tokens=6, text_tokens=4, vision_dim=8, steps=1, warmup=1,
                         attn=("sdpa", "flash_attention_2"), checkpointing=(True,))
    assert rec["runs"][0]["attn"] == "sdpa" and rec["runs"][0]["tokens_per_s"] > 0 and rec["tokens_per_sample"] == 10
    assert rec["runs"][1] == {"attn": "flash_attention_2", "skipped": "CUDA only"}


def test_make_gpu_check_runs_on_cpu_at_toy_sizes(tmp_path):
    out = tmp_path / "gpu-check.json"
    r = subprocess.run(["make", "gpu-check", f"GPU_CHECK_OUT={out}", f"VENV={Path(sys.executable).parent.parent}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert rep["sizes"] == ("real" if torch.cuda.is_available() else "toy") and rep["within_budget"] and rep["budget_s"] == 480
    f = rep["features"][0]
    assert f["failed"] == 0 and f["tower_frames_per_s"] > 0 and 0 < f["busy_fraction"] <= 1 and isinstance(f["decode_bound"], bool)
    assert any(run.get("tokens_per_s") for run in rep["lm_train"]["runs"]) and rep["machine"]["cpu"]["cores"] >= 1
    social = rep["social"]  # the social signals at toy size: frames/s and real-time factors (espeak-ng makes the speech)
    assert social["frames_per_s"] > 0 and social["frames"] == 16 and 0 < social["asr_rtf"] and 0 < social["vad_rtf"], social
    check_e2e_and_recipe(rep)


def check_e2e_and_recipe(rep: dict) -> None:
    "The end-to-end section (every step passed, on the check's device) and the recipe estimate of a gpu-check report."
    e2e = rep["e2e"]
    assert e2e["ok"] and e2e["device"] == rep["device"], [s for s in e2e["steps"] if not s["ok"]]
    assert [s["step"] for s in e2e["steps"]] == ["synth", "features", "train", "train temporal + lora", "eval", "chat", "temporal --dry-run"]
    assert all(s["seconds"] > 0 and "error" not in s for s in e2e["steps"]) and rep["ok"]
    recipe = rep["recipe"]
    assert recipe["hours_one_gpu"] > 0 and recipe["per_gpu_batch_size"] >= 1 and "Video-ChatGPT recipe" in recipe["summary"]
    assert recipe["recipe"]["tokens"] == 100_000 * 3 * rep["lm_train"]["tokens_per_sample"]


def test_bench_list_and_routes(capsys):
    from vtom.cli import BENCHMARKS, main
    assert main(["bench", "--list"]) == 0 and main(["bench"]) == 0
    out = capsys.readouterr().out
    assert all(line.split()[0] in BENCHMARKS for line in out.splitlines()) and out.count("features ") == 2
    assert BENCHMARKS["features"][:2] == ("vtom.bench", "bench_features_main") and BENCHMARKS["train"][0] == "vtom.bench"


def test_bench_features_one_json_line(capsys):
    "The whole path against the reference-style one; on an AMX CPU also in fp32 (same_dtype_*) with the dtype's cosine."
    from vtom.bench import bench_features_main
    from vtom.core import cpu_bf16_fast
    assert bench_features_main(["--videos", "carphone", "--num-frames", "4", "--rounds", "1", "--workers", "1"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["bench"] == "features" and rec["failed"] == 0 and rec["frames"] == 4 and rec["reference_dtype"] == "float32"
    assert rec["frames_per_s"] > 0 and rec["reference_frames_per_s"] > 0 and rec["speedup_vs_reference"] > 0
    assert rec["dtype"] == ("bfloat16" if cpu_bf16_fast() else "float32") and rec["amx_bf16"] == cpu_bf16_fast()
    if cpu_bf16_fast(): assert rec["same_dtype_frames_per_s"] > 0 and rec["cosine_vs_same_dtype_min"] > 0.9999


def test_bench_train_prints_one_json_line(capsys):
    from vtom.bench import bench_train_main
    assert bench_train_main(["--llm", "tiny", "--steps", "1", "--num-frames", "4", "--num-spatial-tokens", "4", "--vision-hidden-size", "16"]) == 0
    rec = json.loads(capsys.readouterr().out.strip())
    assert rec["frozen"]["params_with_grad"] < rec["naive"]["params_with_grad"] and rec["frozen_speedup"] > 0


def test_bench_decode_pool_one_line_per_setting(tmp_path, capsys):
    "`vtom bench decode --workers 1 2 --pool thread process`: one JSON line per setting, CPU time beside wall time."
    from vtom.bench import bench_decode_main
    from vtom.decode import make_test_video
    clip = make_test_video(tmp_path / "c.mp4", seconds=2.0, fps=10, size=(64, 48))
    assert bench_decode_main([str(clip), "--workers", "1", "2", "--pool", "thread", "process", "--num-frames", "5", "--videos", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(r["pool"], r["workers"]) for r in lines] == [("thread", 1), ("thread", 2), ("process", 1), ("process", 2)]
    assert all(r["frames"] == 10 and r["cpu_s"] > 0 and r["ffmpeg_threads"] == 1 for r in lines)
    assert "speedup_vs_1_worker" in lines[1] and "speedup_vs_1_worker" in lines[3]


def test_recipe_estimate_picks_what_fits():
    from vtom.bench import recipe_estimate
    rec = {"batch_size": 4, "tokens_per_sample": 456, "lm_parameters": 6_738_415_616, "dtype": "bfloat16",
           "runs": [{"attn": "sdpa", "checkpointing": True, "tokens_per_s": 10649.0, "peak_gpu_gib": 13.8},
                    {"attn": "sdpa", "checkpointing": False, "tokens_per_s": 15077.0, "peak_gpu_gib": 20.5},
                    {"attn": "eager", "checkpointing": False, "error": "out of memory"}]}
    big, small = recipe_estimate(rec, 139.8), recipe_estimate(rec, 16.0)
    assert (big["per_gpu_batch_size"], big["gradient_checkpointing"], big["gradient_accumulation"]) == (32, False, 1)
    assert (small["per_gpu_batch_size"], small["gradient_checkpointing"], small["gradient_accumulation"]) == (4, True, 8)
    assert abs(big["hours_one_gpu"] - 100_000 * 3 * 456 / 15077 / 3600) < 0.01 and small["hours_one_gpu"] > big["hours_one_gpu"]
    assert recipe_estimate({"runs": []}) == {"skipped": "no training run was measured"}
