#!/bin/bash
# One prepared GPU check: tests on the GPU backend, then the speed/memory benchmarks, each under its own
# time limit, writing to $OUT (all.tgz and log.txt). Results of 2026-11-29: benchmarks/results/gpu_h200/.
#
# It runs from a copy of the repository on a machine whose python3 has jax (with its CUDA plugin), flax,
# optax, chex, scikit-learn, pytest and pytest-xdist, but nothing else and no network. Prepare, in the repo:
#   echo /.devrun/ >> .git/info/exclude; mkdir -p .devrun/whl .devrun/shared/data .devrun/shared/reference
#   pip download --no-deps --only-binary=:all: -d .devrun/whl jraph==0.0.6.dev0
#   cp -r ../shared/reference/nino .devrun/shared/reference/   # less gnn_forward/fm16_nino.npz if space is short
#   cp -r ../shared/data/tiny_shakespeare .devrun/shared/data/
#   mkdir .devrun/shared/data/fashion-mnist; cp /usr/share/datasets/fashion-mnist/*.gz .devrun/shared/data/fashion-mnist/
#   cp benchmarks/gpu_check.sh .devrun/
# then run `OUT=... PARTS=tests,demo,... bash .devrun/gpu_check.sh` there (no PARTS: every part).
set -u
cd "$(dirname "$0")/.."
R=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devrun/whl/*.whl
export PYTHONPATH=$R:/tmp/site PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export OPTAX_NOWCAST_DATA_DIR=$R/.devrun/shared/data
export OPTAX_NOWCAST_NINO_WEIGHTS=$R/.devrun/shared/reference/nino/weights/nino_no_posw.npz
[ -e ../shared ] || ln -s "$R/.devrun/shared" ../shared
W=/tmp/gpuout; rm -rf $W /tmp/gpurun; mkdir -p $W
L=$W/log.txt
t0=$SECONDS
sec() { echo "=== $1 (t=$((SECONDS - t0)) s)" | tee -a "$L"; tar czf "$OUT/all.tgz" -C /tmp gpuout; cp "$L" "$OUT/"; }
only() { [ -z "${PARTS:-}" ] || [[ ",$PARTS," == *",$1,"* ]]; }

sec env
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import jax,flax,optax,chex,jraph,numpy;print('jax',jax.__version__,'flax',flax.__version__,'optax',optax.__version__,'chex',chex.__version__,'numpy',numpy.__version__,jax.devices(),jax.default_backend())"
  nproc; } >>"$L" 2>&1

if only tests; then
  sec tests
  timeout -k 5 "${T_TESTS:-130}" python3 -m pytest -o addopts="" -v -n 14 -p no:cacheprovider -p no:benchmark -rfE --tb=line \
    tests/test_transform.py tests/test_linefit.py tests/test_nino.py tests/test_graphs.py tests/test_wnn.py \
    tests/test_lfd.py tests/test_weight_prediction.py tests/test_errors.py tests/test_properties.py \
    tests/test_pretrained.py tests/test_resume.py tests/test_integrations.py tests/test_schedules.py \
    >"$W/tests.txt" 2>&1
  echo "rc=$?" >>"$L"; grep -E "FAILED|ERROR|passed|failed" "$W/tests.txt" | tail -30 >>"$L"
fi
if only demo; then
  sec demo
  timeout -k 5 60 python3 -m optax_nowcast demo --quiet --out "$W/demo" >>"$L" 2>&1; echo "rc=$?" >>"$L"
fi
if only overhead; then
  sec overhead
  timeout -k 5 60 python3 -m benchmarks.overhead --out "$W/overhead" >>"$L" 2>&1; echo "rc=$?" >>"$L"
fi
if only memory; then
  sec memory
  timeout -k 5 "${T_MEM:-50}" python3 -m benchmarks.memory --task LM-3-64 --out "$W/memory" >>"$L" 2>&1; echo "rc=$?" >>"$L"
fi
if only nino_speed; then
  sec nino_speed
  timeout -k 5 "${T_NS:-50}" python3 -m benchmarks.nino_speed --weights "$OPTAX_NOWCAST_NINO_WEIGHTS" \
    --out "$W/nino_speed" >>"$L" 2>&1; echo "rc=$?" >>"$L"
fi
if only paired; then
  sec paired
  timeout -k 5 "${T_PAIRED:-110}" python3 -m benchmarks.paired_time --tasks ${P_TASKS:-FM-32,LM-3-64} \
    --methods linefit,wnn+,nino-ours --repeats 3 --out "$W/paired" >>"$L" 2>&1; echo "rc=$?" >>"$L"
fi
if only run; then
  sec run
  timeout -k 5 "${T_RUN:-100}" python3 -m benchmarks.run --tasks FM-32 --methods adam,nino-ours --seeds 1 \
    --out /tmp/gpurun --quiet >>"$L" 2>&1; echo "rc=$?" >>"$L"
  cp -r /tmp/gpurun "$W/run" 2>>"$L"
fi
sec done
