#!/usr/bin/env bash
# A second venv, .venv-tflite, holding only tflite-runtime (the fallback inference
# runtime), the numpy it was built for and msgspec (the model manifests' declarations),
# without ai-edge-litert: the tests run the agent's runtime adapter in it to prove the
# fallback path on real models.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-tflite
stamp="$VENV/.outpost-fallback"
want="tflite-runtime==2.14.0 numpy<2 msgspec>=0.19,<1"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "==> creating $VENV with $want (the fallback runtime, for the tests)" >&2
rm -rf "$VENV"
.venv/bin/python -m venv "$VENV"
# tflite-runtime 2.14 is the last release; it was built against numpy 1.x.
"$VENV/bin/python" -m pip install -q "tflite-runtime==2.14.0" "numpy<2" "msgspec>=0.19,<1"
echo "$want" > "$stamp"
