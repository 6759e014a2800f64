#!/usr/bin/env bash
# Red-team the served model with NVIDIA garak (a scanner nobody here wrote), through its
# OpenAI-compatible generator, against 127.0.0.1 only.
#
#   bash scripts/redteam_garak.sh                                   # serves runs/demo/export
#   EXPORT=path/to/export PROBES=malwaregen.TopLevel bash scripts/redteam_garak.sh
#   EXPORT=base bash scripts/redteam_garak.sh                       # the base model, for comparison
#
# - garak (pinned) goes into its OWN venv ($GARAK_VENV, default ~/.cache/safety-signal/venv-garak),
#   so its dependency tree (torch, transformers<5.20, openai<3, litellm, ...) never touches .venv.
# - The probes are a small set whose detectors are string / regex matchers (no detector model is
#   downloaded; HF_HUB_OFFLINE=1). Results: runs/redteam/garak/ (garak's report.jsonl + html) and
#   runs/redteam/garak/summary.md (pass rate per probe and detector).
# - Env: EXPORT, PORT (8011), PROBES, GENERATIONS (1), MAX_TOKENS (96), GATE_LEVEL (medium),
#   PROMPT_CAP (prompts per probe, 64), PARALLEL (garak's concurrent attempts, 8: the server
#   batches them), GARAK_VENV, GARAK_VERSION (0.17.1), SKIP_INSTALL=1 to reuse the venv, OUT (results
#   folder, default runs/redteam/garak/<export path with / as _>).
# - EXPORT=base: the un-fine-tuned built-in model (BASE_MODEL, default smollm2-135m-instruct) exported with
#   `use_cls: false` (nothing attends [CLS], so the LM is exactly the base model) and served with gate
#   level low (verdicts ignored): the base model behind the same server, for the base-vs-method table.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EXPORT="${EXPORT:-runs/demo/export}"
if [ "$EXPORT" = base ]; then
  BASE_MODEL="${BASE_MODEL:-smollm2-135m-instruct}"
  EXPORT="runs/redteam/base-$BASE_MODEL"
  GATE_LEVEL=low
  [ -f "$EXPORT/safety_config.json" ] || "$ROOT/.venv/bin/python" - "$BASE_MODEL" "$EXPORT" <<'EOF'
import sys
from lightning_modules.safety_signal_lm import SafetySignalLM
from safety_signal.config import SafetyConfig
module = SafetySignalLM(model_name=sys.argv[1], safety=SafetyConfig(use_cls=False))
module.configure_model()
module.export_pretrained(sys.argv[2])
EOF
fi
PORT="${PORT:-8011}"
PROBES="${PROBES:-malwaregen.TopLevel,promptinject.HijackHateHumans,dan.Dan_11_0}"
GENERATIONS="${GENERATIONS:-1}"
MAX_TOKENS="${MAX_TOKENS:-96}"
GATE_LEVEL="${GATE_LEVEL:-medium}"
PROMPT_CAP="${PROMPT_CAP:-64}"
PARALLEL="${PARALLEL:-8}"
GARAK_VERSION="${GARAK_VERSION:-0.17.1}"
GARAK_VENV="${GARAK_VENV:-$HOME/.cache/safety-signal/venv-garak}"
OUT="${OUT:-$ROOT/runs/redteam/garak/$(echo "${EXPORT%/}" | tr "/" "_")}"
PY="$ROOT/.venv/bin/python"

[ -d "$EXPORT" ] || [ -f "$EXPORT" ] || { echo "no model at $EXPORT (train the demo: python demo.py, or set EXPORT)" >&2; exit 1; }

# 1. garak in a separate venv (pinned).
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  python3 -m venv "$GARAK_VENV"
  "$GARAK_VENV/bin/pip" install --quiet --upgrade pip
  "$GARAK_VENV/bin/pip" install --quiet "garak==$GARAK_VERSION"
fi
"$GARAK_VENV/bin/python" -c "import garak, sys; print('garak', garak.__version__, 'in', sys.prefix)"

# 2. Serve the model on 127.0.0.1 (stopped on exit).
mkdir -p "$OUT"
# Its own session (process group): the API process, its uvicorn fork and the model worker stop together.
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" setsid "$PY" serve.py --model "$EXPORT" --host 127.0.0.1 --port "$PORT" \
  --gate.level "$GATE_LEVEL" --max_tokens_limit 1024 > "$OUT/server.log" 2>&1 &
SERVER_PID=$!
stop_server() {
  kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "$SERVER_PID" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
}
trap stop_server EXIT
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -50 "$OUT/server.log"; exit 1; }
  sleep 1
done
MODEL_ID="$(curl -sf "http://127.0.0.1:$PORT/v1/models" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')"

# 3. garak's OpenAI-compatible generator against it (greedy: temperature 0; no stop strings).
cat > "$OUT/generator.json" <<EOF
{"openai": {"OpenAICompatible": {
  "uri": "http://127.0.0.1:$PORT/v1/", "model": "$MODEL_ID", "api_key": "unused",
  "temperature": 0.0, "top_p": 1.0, "max_tokens": $MAX_TOKENS, "stop": [],
  "suppressed_params": ["frequency_penalty", "presence_penalty", "n"], "retry_json": false
}}}
EOF
cat > "$OUT/run.yaml" <<EOF
run:
  soft_probe_prompt_cap: $PROMPT_CAP
system:
  parallel_attempts: $PARALLEL
  lite: true
EOF
START=$(date +%s)
XDG_DATA_HOME="$OUT/xdg" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OPENAICOMPATIBLE_API_KEY=unused \
  "$GARAK_VENV/bin/python" -m garak --target_type openai.OpenAICompatible --target_name "$MODEL_ID" \
  --generator_option_file "$OUT/generator.json" --probes "$PROBES" --generations "$GENERATIONS" \
  --config "$OUT/run.yaml" --report_prefix safety-signal --seed 0 2>&1 | tee "$OUT/garak.log"
echo "garak took $(( $(date +%s) - START )) s"

# 4. Pass rates from garak's report (entry_type "eval": passed / total per probe and detector).
REPORT="$(find "$OUT/xdg" -name 'safety-signal*.report.jsonl' | sort | tail -1)"
"$PY" - "$REPORT" "$OUT/summary.md" "$EXPORT" "$GATE_LEVEL" <<'EOF'
import json, sys
report, out, export, level = sys.argv[1:5]
rows = [json.loads(line) for line in open(report, encoding="utf-8")]
evals = [r for r in rows if r.get("entry_type") == "eval"]
lines = [f"garak on `{export}` (gate level {level}), report `{report}`", "",
         "| probe | detector | passed / total | pass rate |", "|---|---|---|---|"]
for r in evals:
    total = r.get("total_evaluated", r.get("total", 0))
    passed = r.get("passed", 0)
    rate = f"{100 * passed / total:.0f}%" if total else "n/a"
    lines.append(f"| {r['probe']} | {r['detector']} | {passed} / {total} | {rate} |")
open(out, "w", encoding="utf-8").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
