#!/usr/bin/env bash
# GPU readiness check: on a CUDA machine, install the [gpu] extra in a fresh venv,
# run the GPU-relevant tests and time R50 / R101 with benchmarks/speed.py.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#   GPU_CHECK_BUDGET=420 bash benchmarks/gpu_check.sh
#
# Without a GPU it says so and exits 0 without installing anything.
# Writes benchmarks/results/gpu_check_<gpu>.json (test outcome, machine, the
# speed.py rows) and benchmarks/results/speed_gpu_<gpu>*.json; the whole run
# stays under GPU_CHECK_BUDGET seconds (default 460: under 8 minutes).
#
# The JAX route, for a GPU machine where TensorFlow's CUDA build cannot be
# installed (no package index) but a CUDA JAX can run: GPU_CHECK_ROUTE=jax, or
# automatically when the TensorFlow install fails. It runs
# benchmarks/jax_gpu_check.py (checks against references, then R50 + ASPP [+ LDv2]
# timed in turns with PyTorch) with GPU_CHECK_PYTHON (default python3), which needs
# Keras 3 and JAX, not TensorFlow; GPU_CHECK_WHEELS=DIR installs the wheels in DIR
# (e.g. keras, namex, optree) without an index first. Writes
# benchmarks/results/jax_gpu_check_<gpu>.json. GPU_CHECK_JAX_ARGS adds arguments;
# GPU_CHECK_OUT replaces benchmarks/results.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no CUDA GPU on this machine (nvidia-smi absent or finds none); nothing installed, nothing run"
    exit 0
fi

start=$(date +%s)
budget=${GPU_CHECK_BUDGET:-460}
left() { echo $(( budget - ($(date +%s) - start) )); }
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_' | tr -cd 'A-Za-z0-9_-')
count=$(nvidia-smi -L | wc -l)
out=${GPU_CHECK_OUT:-benchmarks/results}
mkdir -p "$out"
echo "gpu_check: $count x $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"

jax_route() {
    local py=${GPU_CHECK_PYTHON:-python3} site
    if [ -n "${GPU_CHECK_WHEELS:-}" ]; then
        site=$(mktemp -d)
        "$py" -m pip install -q --no-index --no-deps --target "$site" "$GPU_CHECK_WHEELS"/*.whl \
            || return 1
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    "$py" -c "import jax, keras" || { echo "gpu_check: the JAX route needs jax and keras in $py"; return 1; }
    echo "gpu_check: JAX route with $py ($(left) s left)"
    # shellcheck disable=SC2086
    timeout "$(( $(left) > 30 ? $(left) : 30 ))" "$py" benchmarks/jax_gpu_check.py \
        --json "$out/jax_gpu_check_${gpu}.json" ${GPU_CHECK_JAX_ARGS:-}
}

route=${GPU_CHECK_ROUTE:-auto}
case "$route" in
    jax) jax_route; exit $? ;;
    auto|tf) ;;
    *) echo "gpu_check: GPU_CHECK_ROUTE must be auto, tf or jax, not '$route'"; exit 2 ;;
esac

venv=${GPU_CHECK_VENV:-.venv-gpu}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || exit 1
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1 TF_CPP_MIN_LOG_LEVEL=2
# tensorflow[and-cuda] provides the same `tensorflow` module as tensorflow-cpu:
# install the package without its CPU wheel, then the GPU one and the rest.
if ! { pip install -q --no-deps -e . &&
    pip install -q "tensorflow[and-cuda]==2.21.*" "keras==3.15.*" "numpy>=1.26" "pillow>=10" \
        "pytest>=8" "tf2onnx==1.17.*" "onnx>=1.16" "onnxruntime>=1.18"; }; then
    deactivate
    [ "$route" = auto ] || exit 1
    echo "gpu_check: TensorFlow's CUDA build could not be installed; trying the JAX route"
    jax_route
    exit $?
fi
python -c "import tensorflow as tf; g = tf.config.list_physical_devices('GPU'); \
print('TensorFlow', tf.__version__, 'sees', len(g), 'GPU(s)'); assert g, 'TensorFlow sees no GPU'" || exit 1

# Dilated conv values and gradients, LDv2 both implementations, mixed precision,
# the XLA train step and MirroredStrategy over the visible GPUs, SavedModel / ONNX export.
tests=(tests/layers/test_conv.py tests/layers/test_ldv2.py tests/layers/test_norm.py
       tests/models/test_gald.py tests/models/test_segmenter_replicas.py tests/test_export.py)
test_budget=$(( $(left) / 2 ))
echo "gpu_check: tests (${test_budget} s at most): ${tests[*]}"
timeout "$test_budget" python -m pytest -q -p no:cacheprovider -x "${tests[@]}" \
    2>&1 | tee "$out/gpu_check_tests_${gpu}.log" | tail -15
test_rc=${PIPESTATUS[0]}

# Speed: R50 and R101, fp32 / fp16 / XLA at 512x512, R101 GALDv2 at 1024x2048.
speed_rc=0
if [ "$(left)" -gt 60 ]; then
    timeout "$(( $(left) - 10 ))" python benchmarks/speed.py --no-torch --sections forward \
        --configs r50_aspp,r50_aspp_ldv2,r101_aspp,r101_aspp_ldv2 --modes fp32,fp16,fp32_xla \
        --large --repeats 10 --json "$out/speed_gpu_${gpu}.json" 2>&1 | tail -25
    speed_rc=${PIPESTATUS[0]}
else
    echo "gpu_check: no time left for speed.py"
    speed_rc=124
fi

python - "$out" "$gpu" "$test_rc" "$speed_rc" "$count" <<'EOF'
import json, pathlib, subprocess, sys
out, gpu, test_rc, speed_rc, count = sys.argv[1:]
summary = {
    "gpu": subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                           "--format=csv,noheader"], capture_output=True, text=True).stdout.strip(),
    "gpus": int(count), "tests_rc": int(test_rc), "speed_rc": int(speed_rc),
    "tests_log": f"{out}/gpu_check_tests_{gpu}.log", "speed_json": f"{out}/speed_gpu_{gpu}.json",
}
path = pathlib.Path(out) / f"gpu_check_{gpu}.json"
path.write_text(json.dumps(summary, indent=1))
print("gpu_check: wrote", path)
EOF
echo "gpu_check: tests rc $test_rc, speed rc $speed_rc, $(( $(date +%s) - start )) s"
[ "$test_rc" -eq 0 ] && [ "$speed_rc" -eq 0 ]
