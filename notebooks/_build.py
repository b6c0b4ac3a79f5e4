"""Builds the notebooks (outputs-free) from the cell sources below: python notebooks/_build.py."""

from __future__ import annotations

import os

import nbformat as nbf

HERE = os.path.dirname(os.path.abspath(__file__))

INSTALL = '''# Colab / a fresh machine: install the package (skipped when it is already importable).
try:
    import optax_nowcast  # noqa: F401
except ImportError:
    %pip install -q "optax_nowcast[tasks] @ git+https://github.com/optax-nowcast/optax_nowcast"'''

SETUP = '''import functools
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import optax_nowcast as onc
from optax_nowcast.tasks import make_task

# CI runs every notebook with OPTAX_NOWCAST_SMALL=1: the same code on a smaller budget.
SMALL = os.environ.get("OPTAX_NOWCAST_SMALL") == "1"
print("JAX", jax.__version__, "on", jax.default_backend(), "| small run:", SMALL)'''

TRAIN_LOOP = '''def train(task, tx, steps, eval_every, seed=0, grad_fn=None):
    """Trains `task` with `tx`; returns the validation curve and the final optimizer state.

    `steps // eval_every` jitted chunks of `eval_every` steps (a `lax.scan`), with the parameters and the
    optimizer state donated, and an evaluation on the task's fixed validation subset after each chunk.
    """
    grad_fn = grad_fn or (lambda p, o, idx: jax.value_and_grad(task.loss)(p, idx))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def chunk(params, opt_state, idx):
        def step(carry, i):
            p, o = carry
            _, g = grad_fn(p, o, i)
            u, o = tx.update(g, o, p)
            return (optax.apply_updates(p, u), o), None
        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), idx)
        return params, opt_state

    evaluate = jax.jit(task.evaluate)
    params = task.init(jax.random.PRNGKey(seed))
    opt_state = tx.init(params)
    curve = []
    for start in range(0, steps, eval_every):
        params, opt_state = chunk(params, opt_state, jnp.asarray(task.batch_indices(seed, start, eval_every)))
        curve.append(float(evaluate(params)["metric"]))
    return np.asarray(curve), opt_state


def steps_to(curve, eval_every, target, window=3):
    """First step where the moving average of the accuracy curve reaches `target` (None if never)."""
    sm = np.convolve(curve, np.ones(window) / window, mode="valid")
    hit = np.flatnonzero(sm >= target - 1e-12)
    return int((hit[0] + window) * eval_every) if len(hit) else None'''


def notebook(cells):
  nb = nbf.v4.new_notebook()
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  nb.metadata["colab"] = {"provenance": []}
  nb.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c)
              for c in cells]
  return nb


QUICKSTART = [
    '''md:# optax_nowcast quickstart

*Nowcasting* jumps a network's parameters to where the optimizer would have taken them many steps later.
`optax_nowcast.nowcast` is an optax transformation: chain it after your optimizer. Every `interval` steps it
records the parameters; every `ctx * interval` steps a predictor extrapolates the recorded states `k`
intervals ahead and the parameters jump there.

Here: Adam vs Adam + nowcast(linefit+) on Fashion-MNIST with NiNo's 3-layer CNN (FM/16), or on sklearn's
digits when Fashion-MNIST is not installed.''',
    INSTALL,
    SETUP,
    '''try:
    task = make_task("FM-16")
except FileNotFoundError as err:  # e.g. Colab without the data: sklearn's digits are always there
    print(err, "\\n-> using sklearn digits instead")
    task = make_task("digits")
STEPS = 400 if SMALL else 3000
EVAL_EVERY = 20 if SMALL else 50
INTERVAL = 20 if SMALL else 100  # record the parameters every INTERVAL steps
CTX = 5  # ... and jump every CTX * INTERVAL steps
print(task.name, task.spec)''',
    TRAIN_LOOP,
    '''methods = {
    "adam": task.optimizer(),
    "adam + nowcast(linefit+)": optax.chain(
        task.optimizer(),
        onc.nowcast(onc.predictors.linefit_plus(), interval=INTERVAL, ctx=CTX, horizon=CTX)),
}
curves, states = {}, {}
for name, tx in methods.items():
    curves[name], states[name] = train(task, tx, STEPS, EVAL_EVERY)
    print(f"{name:28s} final validation accuracy {curves[name][-1]:.4f}")
nc = onc.find_nowcast_state(states["adam + nowcast(linefit+)"])
print("jumps:", int(nc.n_jumps), "rejected:", int(nc.n_rejected))''',
    '''steps = np.arange(1, STEPS // EVAL_EVERY + 1) * EVAL_EVERY
jumps = [j + 1 for j in onc.schedules.constant_period(INTERVAL * CTX).jump_steps(STEPS - 1)]
fig, ax = plt.subplots(figsize=(8, 4))
for name, c in curves.items():
    ax.plot(steps, c, label=name)
for j in jumps:
    ax.axvline(j, color="gray", lw=0.5, ls=":")
low = min(c[len(c) // 4:].min() for c in curves.values())
ax.set(xlabel="step", ylabel="validation accuracy", ylim=(max(0.0, low - 0.02), None),
       title=f"{task.name}: Adam vs Adam + nowcast (dotted: jumps)")
ax.legend()
plt.show()''',
    '''# Adam's final (smoothed) accuracy is the target.
target = np.convolve(curves["adam"], np.ones(3) / 3, mode="valid")[-1]
for name, c in curves.items():
    print(f"{name:28s} reaches {target:.4f} at step {steps_to(c, EVAL_EVERY, target)}")''',
    '''md:`nowcast` works with any optax optimizer and wrapper (`adamw`, `sgd`, `MultiSteps`,
`inject_hyperparams`), in Flax Linen `TrainState` and NNX `nnx.Optimizer` (see the next notebook), and the
predictor is a plug-in: `predictors.linefit()`, `linefit_plus()`, `nino(weights=...)`.''',
]

NNX = [
    '''md:# A Flax NNX training script with nowcasting

A full NNX training loop: `nnx.Optimizer` holding `optax.chain(adam, nowcast(predictor))`, a jitted train
step with the model and optimizer donated, and a steps-to-target table for every predictor available here
(linefit, linefit+, and WNN, WNN+ and LFD-2 with the weights shipped in the package).
NiNo needs the official checkpoint (`nino_no_posw.pt` or its `.npz`): set `OPTAX_NOWCAST_NINO_WEIGHTS`.''',
    INSTALL,
    '''import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import optax_nowcast as onc
from optax_nowcast.tasks import conv_as_matmul, load_digits_split, load_fashion_mnist

SMALL = os.environ.get("OPTAX_NOWCAST_SMALL") == "1"  # CI: the same code on a smaller budget
print("JAX", jax.__version__, "on", jax.default_backend(), "| small run:", SMALL)''',
    '''class CNN(nnx.Module):
    """NiNo's FM/16 network in NNX: 3 convs (16-32-32), global average pooling, a linear classifier."""

    def __init__(self, in_channels, rngs, conv=None):
        kw = {} if conv is None else {"conv_general_dilated": conv}
        self.conv1 = nnx.Conv(in_channels, 16, (3, 3), strides=2, padding="VALID", rngs=rngs, **kw)
        self.conv2 = nnx.Conv(16, 32, (3, 3), padding="SAME", rngs=rngs, **kw)
        self.conv3 = nnx.Conv(32, 32, (3, 3), padding="SAME", rngs=rngs, **kw)
        self.fc = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv1(x))
        x = nnx.relu(self.conv2(x))
        x = nnx.relu(self.conv3(x))
        return self.fc(x.mean(axis=(1, 2)))


try:
    data = load_fashion_mnist()
    x_train = (data.x_train.astype(np.float32) / 255 - data.mean[0]) / data.std[0]
    x_val = (data.x_test.astype(np.float32) / 255 - data.mean[0]) / data.std[0]
    y_train, y_val, lr = data.y_train, data.y_test, 6e-3
except FileNotFoundError as err:
    print(err, "\\n-> using sklearn digits (as 8x8 images) instead")
    d = load_digits_split()
    x_train, x_val = d.x_train.reshape(-1, 8, 8, 1), d.x_val.reshape(-1, 8, 8, 1)
    y_train, y_val, lr = d.y_train, d.y_val, 3e-3
x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
x_val, y_val = jnp.asarray(x_val[:2000]), jnp.asarray(y_val[:2000])
# On CPU, convolutions as im2col matmuls are much faster for these small CNNs (same parameters).
CONV = conv_as_matmul if jax.default_backend() == "cpu" else None
STEPS = 150 if SMALL else 3000
EVAL_EVERY = 10 if SMALL else 50
BATCH = 128
INTERVAL = 10 if SMALL else 100


def steps_to(curve, eval_every, target, window=3):
    """First step where the moving average of the accuracy curve reaches `target` (None if never)."""
    sm = np.convolve(curve, np.ones(window) / window, mode="valid")
    hit = np.flatnonzero(sm >= target - 1e-12)
    return int((hit[0] + window) * eval_every) if len(hit) else None''',
    '''@nnx.jit(donate_argnums=(0, 1))
def train_step(model, optimizer, xb, yb):
    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(xb), yb).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)  # nowcast sees the params through nnx.Optimizer
    return loss


@nnx.jit
def accuracy(model, x, y):
    return jnp.mean(jnp.argmax(model(x), -1) == y)


def run(tx, seed=0):
    model = CNN(x_train.shape[-1], nnx.Rngs(seed), conv=CONV)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    rng = np.random.default_rng(seed)  # the same batches for every method
    curve = []
    for step in range(STEPS):
        idx = rng.integers(0, x_train.shape[0], BATCH)
        train_step(model, optimizer, x_train[idx], y_train[idx])
        if (step + 1) % EVAL_EVERY == 0:
            curve.append(float(accuracy(model, x_val, y_val)))
    return np.asarray(curve), optimizer''',
    '''def with_nowcast(predictor, **kw):
    return optax.chain(optax.adam(lr), onc.nowcast(predictor, interval=INTERVAL, ctx=5, **kw))

methods = {
    "adam": optax.adam(lr),
    "linefit": with_nowcast(onc.predictors.linefit(), horizon=5),
    "linefit+": with_nowcast(onc.predictors.linefit_plus(), horizon=5),
    # Learned predictors with the weights shipped in the package (optax_nowcast/pretrained).
    "wnn": with_nowcast(onc.predictors.wnn(), horizon=5),
    "wnn+": with_nowcast(onc.predictors.wnn_plus(), horizon=onc.schedules.k_decay(40, total_steps=STEPS)),
    "lfd2 (farcast: 2 copies)": optax.chain(optax.adam(lr), onc.farcast(
        onc.predictors.lfd2(), n=5, unit=INTERVAL, horizon=onc.schedules.k_decay(40, total_steps=STEPS))),
}
weights = os.environ.get("OPTAX_NOWCAST_NINO_WEIGHTS")
if weights and os.path.exists(weights):
    methods["nino (official checkpoint)"] = with_nowcast(
        onc.predictors.nino(weights), horizon=onc.schedules.k_decay(40, total_steps=STEPS))
else:
    print("NiNo skipped: set OPTAX_NOWCAST_NINO_WEIGHTS to the official checkpoint to include it.")
results = {}
for name, tx in methods.items():
    results[name] = run(tx)
    print(f"{name:28s} final accuracy {results[name][0][-1]:.4f}")''',
    '''target = np.convolve(results["adam"][0], np.ones(3) / 3, mode="valid")[-1]
base = steps_to(results["adam"][0], EVAL_EVERY, target)
print(f"| method | steps to Adam's final accuracy ({target:.4f}) | reduction | jumps |")
print("|---|---|---|---|")
for name, (curve, opt) in results.items():
    s = steps_to(curve, EVAL_EVERY, target)
    nc = onc.find_nowcast_state(opt.opt_state)
    red = f"{100 * (1 - s / base):.1f} %" if s and base else "—"
    print(f"| {name} | {s} | {red} | {0 if nc is None else int(nc.n_jumps[...])} |")

steps = np.arange(1, len(results["adam"][0]) + 1) * EVAL_EVERY
for name, (curve, _) in results.items():
    plt.plot(steps, curve, label=name)
plt.xlabel("step")
plt.ylabel("validation accuracy")
plt.legend()
plt.show()''',
]

WP = [
    '''md:# AdamW weight prediction (Guan 2023)

Take each gradient at the weights AdamW is about to reach, `s` steps ahead, predicted from its own moments:
`theta_hat = theta - s * lr * m_hat / (sqrt(v_hat) + eps)`; then apply the ordinary AdamW step to `theta`.
`weight_prediction.value_and_grad_at_predicted` wraps a loss so the whole step stays one jitted function.''',
    INSTALL,
    SETUP,
    TRAIN_LOOP,
    '''task = make_task("digits", steps=600 if SMALL else 2000)
STEPS, EVAL_EVERY = task.spec.steps, 20 if SMALL else 50
lr = task.spec.learning_rate
curves = {"adam": train(task, task.optimizer(), STEPS, EVAL_EVERY)[0]}
for s in (1, 2, 3):
    vg = onc.weight_prediction.value_and_grad_at_predicted(task.loss, s, learning_rate=lr)
    name = f"adam + weight prediction (s={s})"
    curves[name] = train(task, task.optimizer(), STEPS, EVAL_EVERY, grad_fn=vg)[0]
target = np.convolve(curves["adam"], np.ones(3) / 3, mode="valid")[-1]
for name, c in curves.items():
    print(f"{name:36s} final {c[-1]:.4f}  steps to Adam's final: {steps_to(c, EVAL_EVERY, target)}")''',
    '''steps = np.arange(1, STEPS // EVAL_EVERY + 1) * EVAL_EVERY
for name, c in curves.items():
    plt.plot(steps, c, label=name)
plt.ylim(0.8, 1.0)
plt.xlabel("step")
plt.ylabel("validation accuracy")
plt.legend()
plt.show()''',
    '''md:With Flax NNX, split the model once (`graphdef, params = nnx.split(model, nnx.Param)`) and write the
loss as `lambda p, x, y: loss(nnx.merge(graphdef, p)(x), y)`: `params` and the optax state are then plain
pytrees and the wrapper works unchanged (`tests/test_weight_prediction.py` has the full example).''',
]


OWN = [
    '''md:# Train your own predictor

Learned predictors (WNN+, WNN, LFD-2, NiNo) learn how parameters move from *trajectories*: parameter states
saved every `interval` steps of real training runs. `optax_nowcast.metatrain` collects them (several runs
vmapped in one jitted scan, float16 memmaps on disk, resumable) and trains predictors on them. Here: collect
digits-MLP runs, train WNN+ and LFD-2, save them, load them and nowcast a new run with them.

The same from a shell:
```
python -m optax_nowcast.metatrain collect --task digits --seeds 0:8 --lr-scales 0.5,1,2 \\
    --steps 2000 --interval 40
python -m optax_nowcast.metatrain train --predictor wnn+ --runs trajectories --out trained
```''',
    INSTALL,
    SETUP,
    TRAIN_LOOP,
    '''import tempfile

from optax_nowcast import metatrain

WORK = tempfile.mkdtemp()
INTERVAL = 20 if SMALL else 40  # a state every INTERVAL steps
STEPS = 400 if SMALL else 2000
runs = metatrain.plan_runs(seeds=range(2 if SMALL else 8), lr_scales=[0.5, 1.0, 2.0])
print(f"{len(runs)} runs, {metatrain.estimate_bytes('digits', runs, STEPS, INTERVAL) / 2**20:.1f} MiB")
metatrain.collect("digits", runs, steps=STEPS, interval=INTERVAL, out_dir=WORK + "/traj", vmap=6)
folders = metatrain.find_runs(WORK + "/traj")
states, meta = metatrain.load_run(folders[0])
print(states.shape, "states x parameters;", meta["steps"][:4], "...")''',
    '''md:Train WNN+ (a per-parameter MLP that predicts horizons 1..K at once) and LFD-2 (a 2 x m linear map
from the first and the latest state). The validation split is by trajectory.''',
    '''K = 10
cfg = metatrain.TrainConfig(horizons=K, hidden=64, steps=200 if SMALL else 2000, elements_per_window=1024)
res = metatrain.train_wnn_plus(folders, cfg, out_dir=WORK + "/weights")
lfd = metatrain.train_lfd_on_runs(folders, metatrain.TrainConfig(steps=300 if SMALL else 2000), n=5, m=K,
                                  coords=256, out_dir=WORK + "/weights")
h = res["history"]
plt.plot([r["step"] for r in h], [r["train_loss"] for r in h], label="train")
plt.plot([r["step"] for r in h], [r["val_loss"] for r in h], label="validation")
plt.xlabel("step")
plt.ylabel("L1 on scaled deltas")
plt.title("WNN+ meta-training")
plt.legend()
plt.show()''',
    '''md:The weights are a Flax msgpack file plus a JSON record; pass the file to the predictor. Compare Adam
with Adam + our WNN+, Adam + our LFD-2 (`farcast`: two stored copies instead of `ctx`) and Adam + the WNN+
shipped with the package (trained on Fashion-MNIST, CIFAR-10, Shakespeare and digits runs).''',
    '''task = make_task("digits")
SEED = 99  # a seed none of the collected runs used
EVAL_EVERY = INTERVAL
own = onc.predictors.wnn_plus(WORK + "/weights/wnn_plus.msgpack")
methods = {
    "adam": task.optimizer(),
    "adam + our WNN+": optax.chain(task.optimizer(), onc.nowcast(own, interval=INTERVAL, ctx=5, horizon=K)),
    "adam + our LFD-2": optax.chain(task.optimizer(), onc.farcast(
        onc.predictors.lfd2(WORK + "/weights/lfd2.msgpack"), n=5, unit=INTERVAL, horizon=K)),
    "adam + shipped WNN+": optax.chain(task.optimizer(), onc.nowcast(
        onc.predictors.wnn_plus(), interval=INTERVAL, ctx=5, horizon=K)),
}
curves = {name: train(task, tx, STEPS, EVAL_EVERY, seed=SEED)[0] for name, tx in methods.items()}
target = np.convolve(curves["adam"], np.ones(3) / 3, mode="valid")[-1]
base = steps_to(curves["adam"], EVAL_EVERY, target)
print(f"| method | steps to Adam's final accuracy ({target:.4f}) | final accuracy |")
print("|---|---|---|")
for name, c in curves.items():
    print(f"| {name} | {steps_to(c, EVAL_EVERY, target)} | {c[-1]:.4f} |")''',
    '''steps = np.arange(1, STEPS // EVAL_EVERY + 1) * EVAL_EVERY
for name, c in curves.items():
    plt.plot(steps, c, label=name)
plt.ylim(max(0.0, min(c[len(c) // 4:].min() for c in curves.values()) - 0.02), 1.0)
plt.xlabel("step")
plt.ylabel("validation accuracy")
plt.legend()
plt.show()''',
]


def main():
  for name, cells in [("01_quickstart", QUICKSTART), ("02_flax_nnx_training", NNX),
                      ("03_train_your_own_predictor", OWN), ("04_weight_prediction", WP)]:
    nbf.write(notebook(cells), os.path.join(HERE, f"{name}.ipynb"))
    print("wrote", name)


if __name__ == "__main__":
  main()
