#!/usr/bin/env bash
# Issue 24 on CUDA: the whole model (perception + tracker + mind route + LoRA) trained, evaluated and chatted with on the GPU at toy
# sizes (`vtom mind --dry-run --device cuda`), then the e2e section of gpu-check. Run from the repo root on the GPU machine after the
# wheel install of tools/gpu-nvdec.sh's header; results under $OUT. About 3 minutes.
set -u
OUT=${OUT:?set OUT to the results folder}
export VTOM_CACHE=${VTOM_CACHE:-/tmp/vtom-cache} HF_HUB_OFFLINE=1
VTOM=(python3 -c 'import sys; from vtom.cli import main; sys.exit(main(sys.argv[1:]))')
echo "== vtom mind --dry-run --device cuda (text + LoRA, tokens + LoRA)"
timeout 200 "${VTOM[@]}" mind --dry-run --device cuda --out "$OUT/mind" --arms "text + LoRA,tokens + LoRA" > "$OUT/mind.stdout" 2> "$OUT/mind.stderr"
echo "rc=$?"; tail -n 3 "$OUT/mind.stdout"; grep -v -e '^W0000' -e '^I0000' "$OUT/mind.stderr" | grep -i -B2 -A8 "error\|traceback" | tail -n 30
echo "== vtom chat --checkpoint (each arm) --device cuda"
for arm in "text + LoRA" "tokens + LoRA"; do
  python3 - "$OUT/mind/report.json" "$arm" <<'PY' > /tmp/chat-args.txt || continue
import json, sys
from pathlib import Path
r = json.load(open(sys.argv[1])); print(r["checkpoints"][sys.argv[2]]); print(sorted(Path(r["synth_dir"], "videos").glob("*.mp4"))[0])
PY
  ck=$(sed -n 1p /tmp/chat-args.txt); clip=$(sed -n 2p /tmp/chat-args.txt)
  timeout 60 "${VTOM[@]}" chat "$clip" "Where will A look for the ball?" --checkpoint "$ck" --device cuda --json --temperature 0 --max-new-tokens 8 \
    2> "$OUT/chat.stderr" | tail -n 1 | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); print({k: r.get(k) for k in ("answer","parts","feature_source","device")})'
  echo "rc=${PIPESTATUS[0]} ($arm)"
done
echo "== e2e section of gpu-check on cuda"
timeout 150 python3 -c 'import json; from vtom.bench import e2e_check; r = e2e_check(device="cuda"); print(json.dumps(r)); print({s["step"]: (s["ok"], s.get("seconds")) for s in r["steps"]})' \
  > "$OUT/e2e.json" 2> "$OUT/e2e.stderr"; echo "rc=$?"; tail -n 1 "$OUT/e2e.json"
