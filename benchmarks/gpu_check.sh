#!/bin/bash
# One prepared GPU check, in one device call of at most 10 minutes: the whole test suite on the GPU backend
# with parallel workers, the per-step overhead and peak-memory sweeps over model sizes, NiNo's jump speed
# and one paper task with 3 seeds, each part under its own time limit, writing to $OUT (all.tgz, log.txt).
# Results of 2026-11-29: benchmarks/results/gpu_h200/.
#
# It runs from a copy of the repository on a machine whose python3 has jax (with its CUDA plugin), flax,
# optax, chex, orbax-checkpoint, hypothesis, matplotlib, scikit-learn, pytest and pytest-xdist, but not
# jraph and no network. Prepare, in the repo (about 20 MB: with the tracked files, inside the 64 MB a call
# carries; Fashion-MNIST (30 MB) and CIFAR-10 stay behind, and the tests that need them skip there):
#   bash benchmarks/gpu_check.sh --prepare
# then, on the device: `OUT=... bash .devrun/gpu_check.sh` (PARTS=tests,overhead,... for some parts only);
# with the device tool: run(command="OUT=$OUT bash .devrun/gpu_check.sh", carry=[".devrun"], timeout_s=600).
# A CPU dry run of every part at toy scale, here:
#   OUT=/tmp/gc QUICK=1 N_WORKERS=2 TESTS=tests/test_zero_cost.py bash .devrun/gpu_check.sh
set -u
if [ "${1:-}" = "--prepare" ]; then
  cd "$(dirname "$0")/.."
  grep -qx "/.devrun/" .git/info/exclude 2>/dev/null || echo /.devrun/ >> .git/info/exclude
  rm -rf .devrun; mkdir -p .devrun/whl .devrun/shared/data .devrun/shared/reference
  python3 -m pip download -q --no-deps --only-binary=:all: -d .devrun/whl jraph==0.0.6.dev0
  cp -r ../shared/reference/nino .devrun/shared/reference/          # the reference vectors and checkpoints
  cp -r ../shared/data/tiny_shakespeare .devrun/shared/data/
  cp benchmarks/gpu_check.sh .devrun/
  du -sh .devrun; exit 0
fi
cd "$(dirname "$0")/.."
R=$PWD
Q=${QUICK:-}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devrun/whl/*.whl
export PYTHONPATH=$R:/tmp/site PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export OPTAX_NOWCAST_DATA_DIR=$R/.devrun/shared/data
export OPTAX_NOWCAST_NINO_WEIGHTS=$R/.devrun/shared/reference/nino/weights/nino_no_posw.npz
[ -e ../shared ] || ln -s "$R/.devrun/shared" ../shared
W=/tmp/gpuout; rm -rf $W /tmp/gpurun; mkdir -p $W
L=$W/log.txt
t0=$SECONDS
sec() { echo "=== $1 (t=$((SECONDS - t0)) s)" | tee -a "$L"; tar czf "$OUT/all.tgz" -C /tmp gpuout; cp "$L" "$OUT/"; }
only() { [[ ",${PARTS:-tests,overhead,memory,nino_speed,run}," == *",$1,"* ]]; }  # demo, paired: on request

sec env
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import jax,flax,optax,chex,jraph,numpy;print('jax',jax.__version__,'flax',flax.__version__,'optax',optax.__version__,'chex',chex.__version__,'numpy',numpy.__version__,jax.devices(),jax.default_backend())"
  nproc; } >>"$L" 2>&1

if only tests; then
  sec tests
  # The whole suite, slow tests included, less the notebooks (no Jupyter there); CIFAR-10 tests skip (not carried).
  timeout -k 5 "${T_TESTS:-160}" python3 -m pytest -o addopts="" -m "" -q -n "${N_WORKERS:-14}" -p no:cacheprovider \
    -p no:benchmark -rfE --tb=line --ignore=notebooks ${TESTS:-tests} >"$W/tests.txt" 2>&1
  echo "rc=$?" >>"$L"; grep -E "FAILED|ERROR|passed|failed" "$W/tests.txt" | tail -30 >>"$L"
fi
if only demo; then
  sec demo
  timeout -k 5 60 python3 -m optax_nowcast demo --quiet --out "$W/demo" >>"$L" 2>&1; echo "rc=$?" >>"$L"
fi
if only overhead; then
  sec overhead
  timeout -k 5 "${T_OVER:-100}" python3 -m benchmarks.overhead ${Q:+--quick} --out "$W/overhead" >>"$L" 2>&1
  echo "rc=$?" >>"$L"
fi
if only memory; then
  sec memory
  timeout -k 5 "${T_MEM:-50}" python3 -m benchmarks.memory --sweep ${Q:+--quick} --out "$W/memory" >>"$L" 2>&1
  echo "rc=$?" >>"$L"
fi
if only nino_speed; then
  sec nino_speed
  timeout -k 5 "${T_NS:-50}" python3 -m benchmarks.nino_speed ${Q:+--quick} --weights "$OPTAX_NOWCAST_NINO_WEIGHTS" \
    --out "$W/nino_speed" >>"$L" 2>&1; echo "rc=$?" >>"$L"
fi
if only paired; then
  sec paired
  timeout -k 5 "${T_PAIRED:-110}" python3 -m benchmarks.paired_time --tasks ${P_TASKS:-LM-3-24,LM-3-64} \
    --methods linefit,wnn+,nino-ours --repeats 3 --out "$W/paired" >>"$L" 2>&1; echo "rc=$?" >>"$L"
fi
if only run; then
  sec run
  # One paper task (LM-3-24: its data travels), 3 seeds: Adam, linefit+ and our NiNo (steps to Adam's target).
  # (QUICK: the CI smoke suite, 300 steps, 1 seed.)
  timeout -k 5 "${T_RUN:-150}" python3 -m benchmarks.run ${Q:+--quick} --tasks ${RUN_TASK:-LM-3-24} \
    --methods adam,linefit+,nino-ours $([ -n "$Q" ] || echo --seeds "${RUN_SEEDS:-3}") --out /tmp/gpurun --quiet >>"$L" 2>&1; echo "rc=$?" >>"$L"
  cp -r /tmp/gpurun "$W/run" 2>>"$L"
fi
sec done
