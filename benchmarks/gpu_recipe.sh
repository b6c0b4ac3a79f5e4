#!/bin/bash
# The diverse meta-training recipe on one lent GPU, in one device call of at most 10 minutes (issue:
# "Meta-training at GPU scale"): `python -m optax_nowcast.metatrain recipe --scale gpu` under its 7.5-minute
# budget, then the weights, the log and the card copied to $OUT (what comes back: 8 files, 16 MiB each).
#
# The machine's python3 has jax (CUDA), flax, optax, chex and scikit-learn, but not jraph and no network.
# Prepare, in the repo (the tracked files, ~36 MiB, plus the packed data, ~24 MiB: inside the 64 MiB a call
# carries):
#   bash benchmarks/gpu_recipe.sh --prepare
# then, with the device tool:
#   run(command="OUT=$OUT bash .devrun_recipe/gpu_recipe.sh", carry=[".devrun_recipe"], timeout_s=590)
# A CPU dry run of the same script at toy scale, here:
#   OUT=/tmp/gr SCALE=toy bash .devrun_recipe/gpu_recipe.sh
# Afterwards, on CPU: benchmark OUT/nino.msgpack against the shipped nino() and the official checkpoint
# (README of the issue), e.g. `python -m research.run --methods nino-recipe-gpu ...` after registering it.
set -u
if [ "${1:-}" = "--prepare" ]; then
  cd "$(dirname "$0")/.."
  grep -qx "/.devrun_recipe/" .git/info/exclude 2>/dev/null || echo /.devrun_recipe/ >> .git/info/exclude
  rm -rf .devrun_recipe; mkdir -p .devrun_recipe/whl
  python3 -m pip download -q --no-deps --only-binary=:all: -d .devrun_recipe/whl jraph==0.0.6.dev0
  python3 -m optax_nowcast.metatrain pack-data --out .devrun_recipe/data
  cp benchmarks/gpu_recipe.sh .devrun_recipe/
  du -sh .devrun_recipe; exit 0
fi
cd "$(dirname "$0")/.."
R=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devrun_recipe/whl/*.whl
export PYTHONPATH=$R:/tmp/site PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export OPTAX_NOWCAST_DATA_DIR=$R/.devrun_recipe/data
W=/tmp/recipe_out
rm -rf $W; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import jax; print(jax.__version__, jax.default_backend(), jax.devices())" >> "$OUT/gpu.txt" 2>&1
timeout 560 python3 -m optax_nowcast.metatrain recipe --scale "${SCALE:-gpu}" --out $W --runs /tmp/recipe_runs \
  2>&1 | tee "$OUT/recipe_log.txt"
for f in nino.msgpack nino.json wnn_plus.msgpack wnn_plus.json recipe_log.json MODEL_CARD.md; do
  [ -f "$W/$f" ] && cp "$W/$f" "$OUT/"
done
ls -la "$OUT"
