#!/usr/bin/env bash
# Run the emprl pipeline from this bundle, with no network (written by `python -m emprl.ops.bundle`).
#
#   ./run.sh RESULTS [--profile gpu] [--device cuda] [--set section.param=value ...]
#
# Checks every file against manifest.json, installs wheels/ into a temporary folder with
# `pip --no-index --no-deps`, unpacks the data, runs the notebooks (emprl.ops.pipeline), and writes the
# rendered notebooks, report, tables, figures and metrics (no checkpoints) to RESULTS as
# archives of at most 16 MB each. PYTHON names the interpreter (default python3).
set -euo pipefail

die() { echo "run.sh: error: $*" >&2; exit 1; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}

USAGE="usage: ./run.sh RESULTS [--profile gpu] [--device cuda] [--set section.param=value ...]"
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || die "$USAGE"
RESULTS=$1; shift
PROFILE=gpu; DEVICE=""; REST=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) [ $# -ge 2 ] || die "--profile needs a value"; PROFILE=$2; shift 2 ;;
    --device) [ $# -ge 2 ] || die "--device needs a value"; DEVICE=$2; shift 2 ;;
    *) REST+=("$1"); shift ;;
  esac
done

command -v "$PY" >/dev/null || die "no Python interpreter '$PY' (set PYTHON=/path/to/python3)"
[ -f "$HERE/manifest.json" ] || die "no manifest.json next to run.sh: this is not a complete bundle"

# 1) every file as the manifest says (hashlib only: nothing is installed yet)
"$PY" - "$HERE" <<'PYEOF' || die "the bundle does not match its manifest (see above): copy it again or rebuild it"
import hashlib, json, sys
from pathlib import Path
root = Path(sys.argv[1])
manifest = json.loads((root / "manifest.json").read_text())
bad = []
for name, expected in manifest["files"].items():
    path = root / name
    if not path.is_file():
        bad.append(f"missing file {name}" + (" (a wheel the target needs)" if name.startswith("wheels/") else ""))
        continue
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        bad.append(f"wrong sha256 for {name}: expected {expected}, got {digest.hexdigest()}")
if manifest["minilm"]["sha256"] != manifest["files"].get("minilm/model.safetensors"):
    bad.append("minilm/manifest.json and manifest.json disagree on the MiniLM copy's sha256")
want = manifest["python"]
have = "%d.%d" % sys.version_info[:2]
if want != have:
    print(f"run.sh: warning: the bundle's wheels are for Python {want}, this is {have}", file=sys.stderr)
for line in bad:
    print("run.sh: " + line, file=sys.stderr)
sys.exit(1 if bad else 0)
PYEOF

WORK=$(mktemp -d "${TMPDIR:-/tmp}/emprl-bundle.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# 2) the wheels the target lacks, into a temporary folder
shopt -s nullglob
WHEELS=("$HERE"/wheels/*.whl)
[ ${#WHEELS[@]} -gt 0 ] || die "no wheels in $HERE/wheels"
"$PY" -m pip install --quiet --no-index --no-deps --no-compile --target "$WORK/site" "${WHEELS[@]}" \
  || die "pip could not install the bundled wheels (see above): are they for this Python and platform?"
export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'PYEOF' || die "the target lacks Python packages the bundle does not carry (see above)"
import importlib.util, sys
needed = ["torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "matplotlib", "seaborn",
          "sklearn", "papermill", "nbclient", "nbformat", "ipykernel", "emprl"]
missing = [m for m in needed if importlib.util.find_spec(m) is None]
for m in missing:
    print(f"run.sh: missing Python package {m!r}: install it on the target, or rebuild the bundle with it "
          "(python -m emprl.ops.bundle --lacks ...)", file=sys.stderr)
sys.exit(1 if missing else 0)
PYEOF

# 3) the data
if [ -f "$HERE/data.tar.gz" ]; then
  tar -xzf "$HERE/data.tar.gz" -C "$WORK" || die "could not unpack data.tar.gz"
  export EMPRL_DATA_DIR="$WORK/data"
fi
[ -n "${EMPRL_DATA_DIR:-}" ] && [ -d "${EMPRL_DATA_DIR}" ] \
  || die "no data: the bundle has no data.tar.gz and EMPRL_DATA_DIR is not set"

# 4) the device
if [ "${DEVICE%%:*}" = "cuda" ]; then
  BUILT_FOR=$("$PY" -c "import torch; print(torch.version.cuda)")
  "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || die "--device $DEVICE, but torch sees no CUDA device (torch built for CUDA: $BUILT_FOR)"
fi

# 5) the pipeline
export EMPRL_MINILM_DIR="$HERE/minilm" EMPRL_CACHE_DIR="$WORK/cache" MPLBACKEND=Agg
export JUPYTER_RUNTIME_DIR="$WORK/jupyter" JUPYTER_DATA_DIR="$WORK/jupyter" IPYTHONDIR="$WORK/ipython"
EMPRL_COMMIT=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['commit'] or '')" \
  "$HERE/manifest.json")
export EMPRL_COMMIT
ARGS=(--profile "$PROFILE" --out "$WORK/out" --notebook-dir "$HERE/notebooks")
[ -n "$DEVICE" ] && ARGS+=(--device "$DEVICE")
START=$(date +%s)
"$PY" -m emprl.ops.pipeline "${ARGS[@]}" ${REST[@]+"${REST[@]}"} || die "the pipeline failed (see above)"
echo "run.sh: pipeline finished in $(( $(date +%s) - START )) s"

# 6) the results, without checkpoints
mkdir -p "$RESULTS"
"$PY" -m emprl.ops.bundle --pack "$WORK/out" --name "emprl-$PROFILE" "$RESULTS" || die "could not archive the results"
echo "run.sh: results in $RESULTS"
