#!/usr/bin/env bash
# Issue 25, nvdec backend: first GPU run (a smoke test of PyNvVideoCodec, which no CPU test could run) and its numbers.
# From the repository root on the GPU machine, after
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .whl-nvdec/*.whl
#   export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1
# run `OUT=... bash tools/gpu-nvdec.sh`. Everything goes under $OUT; stdout gets the compact numbers. About 3 minutes, every step under
# `timeout`, and a step that fails does not stop the next.
set -u
OUT=${OUT:?set OUT to the results folder}
export VTOM_CACHE=${VTOM_CACHE:-/tmp/vtom-cache} HF_HUB_OFFLINE=1
VTOM=(python3 -c 'import sys; from vtom.cli import main; sys.exit(main(sys.argv[1:]))')
step() { echo "== $1"; }

step "GPU"; timeout 20 nvidia-smi -L 2>&1 | tee "$OUT/nvidia-smi.txt"

step "bench clip (60 s 640x360 long GOP, encoded once)"
timeout 90 python3 -c 'from vtom.decode import bench_video; print(bench_video())' 2>&1 | tail -2

step "smoke: PyNvVideoCodec directly, then read_video(backend='nvdec')"
timeout 90 python3 - > "$OUT/smoke.txt" 2>&1 <<'PY'
import tempfile, time, traceback
from pathlib import Path
import numpy as np, torch
from vtom import decode as D
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "| backend_problem(nvdec):", D.backend_problem("nvdec"))
path = D.bench_video()
ix = D._scan(path)
want = D.sample_frame_indices(len(ix.pts), 100)
try:   # the raw API, as vtom calls it: length, timestamps, DLPack tensor, pixels against PyAV
    import PyNvVideoCodec as nvc
    print("PyNvVideoCodec", nvc.__version__)
    torch.cuda.current_device()
    dec = nvc.SimpleDecoder(str(path), gpu_id=0, use_device_memory=True, output_color_type=nvc.OutputColorType.RGB)
    frames = dec.get_batch_frames_by_index(want[:8].tolist())
    print("len", len(dec), "index frames", len(ix.pts), "| getPTS", [f.getPTS() for f in frames[:4]],
          "index pts", [ix.pts[i] for i in want[:4]], "time_base", ix.time_base)
    t = torch.from_dlpack(frames[0])
    print("dlpack tensor", tuple(t.shape), t.dtype, t.device, t.stride())
    got = torch.stack([torch.from_dlpack(f) for f in frames]).cpu().numpy()
    ref = np.stack(list(D._decode_pyav(path, ix, want[:8], None, "nearest")))
    print("mean |nvdec - pyav| grey levels per frame:", np.abs(got.astype(np.int16) - ref).mean(axis=(1, 2, 3)).round(2).tolist())
except Exception: traceback.print_exc()
try:   # through vtom: checked frames, the right ones (counter video), speed of one decoder
    counter = D.make_test_video(Path(tempfile.mkdtemp()) / "counter.mp4", seconds=10, fps=30, size=(640, 360), gop=250)
    c = D.read_video(counter, 20, backend="nvdec")
    print("counter video: right frames", [D.read_counter(f) for f in c.frames.cpu().numpy()] == c.indices.tolist(),
          "| frames", tuple(c.frames.shape), c.frames.dtype, c.frames.device)
    for _ in range(3):
        D.clear_index_cache(); t0 = time.perf_counter(); c = D.read_video(path, 100, backend="nvdec"); torch.cuda.synchronize()
        print(f"bench clip, one decoder: {100 / (time.perf_counter() - t0):.0f} sampled frames/s")
except Exception: traceback.print_exc()
PY
echo "rc=$?"; tail -15 "$OUT/smoke.txt"

step "vtom bench decode --backends pyav nvdec (one decoder each)"
timeout 60 "${VTOM[@]}" bench decode --backends pyav nvdec --repeats 3 --no-memory > "$OUT/bench-decode.json" 2> "$OUT/bench-decode.err"
echo "rc=$?"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print({k: v.get("frames_per_s", v.get("error")) for k, v in r["backends"].items()})' \
  "$OUT/bench-decode.json" 2>&1 | tail -3

step "vtom bench decode --workers: nvdec in threads, pyav in processes"
timeout 75 "${VTOM[@]}" bench decode --backends nvdec --workers 1 4 8 --pool thread --videos 16 > "$OUT/bench-pool-nvdec.jsonl" 2> "$OUT/bench-pool-nvdec.err"
echo "rc=$?"
timeout 45 "${VTOM[@]}" bench decode --backends pyav --workers 8 15 --pool process --videos 30 > "$OUT/bench-pool-pyav.jsonl" 2> "$OUT/bench-pool-pyav.err"
echo "rc=$?"
cat "$OUT"/bench-pool-*.jsonl | python3 -c 'import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print(r["backend"], r["pool"], r["workers"], r.get("frames_per_s", r.get("error")), "frames/s, cpu ms/frame", r.get("cpu_ms_per_frame"))'

step "features pipeline: ViT-L/14 fp16, 48 videos x 100 frames (gpu_check's settings), nvdec vs pyav"
timeout 150 python3 - "$OUT/features.jsonl" 2> "$OUT/features.err" <<'PY'
import json, sys, traceback
from vtom.bench import FEATURES_REAL, NVDEC_WORKERS, bench_features
for backend, workers in [("nvdec", NVDEC_WORKERS), ("nvdec", 4), ("pyav", 14)]:
    try: r = bench_features(dtype="fp16", device="cuda", backend=backend, **(FEATURES_REAL | {"workers": workers}))
    except Exception as e: r = {"error": f"{type(e).__name__}: {str(e)[:300]}", "traceback": traceback.format_exc()[-1500:]}
    with open(sys.argv[1], "a") as f: f.write(json.dumps(r) + "\n")
    print(backend, workers, r.get("decode_pool", ""), "| pipeline", r.get("pipeline_frames_per_s"), "frames/s, busy", r.get("busy_fraction"),
          "| tower", r.get("tower_frames_per_s"), "| one decoder", r.get("decode_frames_per_s"), "| failed", r.get("failed"),
          r.get("error", ""), flush=True)
PY
echo "rc=$?; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
