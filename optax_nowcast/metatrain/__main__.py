"""Command line of the meta-training pipeline.

    python -m optax_nowcast.metatrain collect --task FM-16 --seeds 0:20 [--lr-scales 0.5,1,2] [--vmap 4]
    python -m optax_nowcast.metatrain train --predictor wnn+ --runs trajectories --out trained
    python -m optax_nowcast.metatrain train --predictor wnn --runs trajectories --out trained
    python -m optax_nowcast.metatrain train --predictor nino --runs trajectories --out trained \
        [--head gru] [--lpe 5] [--node-features lpe+centrality] [--budget-minutes 60]   # rerun to resume
    python -m optax_nowcast.metatrain train --predictor lfd2 --n 5 --m 40 --runs trajectories --out trained

    python -m optax_nowcast.metatrain pretrained   # the recipe of the shipped weights, end to end
    python -m optax_nowcast.metatrain recipe --scale gpu --out OUT [--dry-run]   # the diverse recipe
    python -m optax_nowcast.metatrain pack-data --out .data_pack   # its data, small enough to carry

``--out optax_nowcast/pretrained`` replaces the weights shipped with the package (see its MODEL_CARD.md).
"""

from __future__ import annotations

import argparse
import json
import os

from optax_nowcast.metatrain.collect import collect, estimate_bytes, plan_runs


def _seeds(text: str) -> list[int]:
  if ":" in text:
    a, b = text.split(":")
    return list(range(int(a), int(b)))
  return [int(s) for s in text.split(",")]


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(prog="python -m optax_nowcast.metatrain")
  sub = parser.add_subparsers(dest="command", required=True)
  c = sub.add_parser("collect", help="train a task many times, saving parameter states")
  c.add_argument("--task", required=True)
  c.add_argument("--seeds", default="0:4", help="a:b (range) or a,b,c")
  c.add_argument("--lr-scales", default="1", help="learning-rate multipliers, comma-separated")
  c.add_argument("--variants", default="[{}]",
                 help='JSON list of TaskSpec overrides, e.g. [{"features": [8, 16, 16]}]')
  c.add_argument("--steps", type=int, default=10_000)
  c.add_argument("--interval", type=int, default=200)
  c.add_argument("--vmap", type=int, default=4, help="runs trained together in one jitted scan")
  c.add_argument("--out", default="trajectories")
  c.add_argument("--data-dir", default=None)
  c.add_argument("--quiet", action="store_true")
  c.add_argument("--shard", default="0/1",
                 help="i/n: train only runs i, i+n, ... (n processes split a collection; see collect())")
  t = sub.add_parser("train", help="train a predictor on collected trajectories")
  t.add_argument("--predictor", default="wnn+", choices=["wnn+", "wnn", "nino", "lfd2", "lfn", "lfl", "lfs"])
  t.add_argument("--runs", default="trajectories", help="the folder collect wrote")
  t.add_argument("--tasks", default=None, help="comma-separated task names (default: all collected)")
  t.add_argument("--steps", type=int, default=2000)
  t.add_argument("--hidden", type=int, default=128)
  t.add_argument("--horizons", type=int, default=40)
  t.add_argument("--elements", type=int, default=2048, help="coordinates sampled per window")
  t.add_argument("--n", type=int, default=5, help="LFD: saved states between w_0 and w_n")
  t.add_argument("--m", type=int, default=40, help="LFD: saved states predicted after w_n")
  t.add_argument("--seed", type=int, default=0)
  t.add_argument("--out", default="trained")
  t.add_argument("--head", default="mlp", choices=["mlp", "lstm", "gru"],
                 help="NiNo: the head (NiNo++: lstm/gru)")
  t.add_argument("--rnn-hidden", type=int, default=32, help="NiNo: the lstm/gru head's state width")
  t.add_argument("--head-edges", type=int, default=0,
                 help="NiNo: train each window's head on this many random parameter edges (0: all)")
  t.add_argument("--node-features", default="lpe", choices=["lpe", "lpe+centrality"],
                 help="NiNo: node features")
  t.add_argument("--lpe", type=int, default=8,
                 help="NiNo: node feature width: Laplacian eigenvectors (8 in NiNo, 5 in NiNo++)")
  t.add_argument("--budget-minutes", type=float, default=None,
                 help="NiNo: stop after this much training, checkpoint in --out; run again to resume")
  t.add_argument("--fresh", action="store_true", help="NiNo: ignore a checkpoint in --out and start over")
  t.add_argument("--init", default="", help="NiNo: fine-tune these weights (a .msgpack with its .json, e.g. "
                 "optax_nowcast/pretrained/nino.msgpack) instead of starting from a random init")
  t.add_argument("--learning-rate", type=float, default=None,
                 help="NiNo: peak learning rate of the cosine decay (default 3e-3)")
  pr = sub.add_parser("pretrained", help="rerun the recipe of the shipped weights (collect + train + card)")
  pr.add_argument("--runs", default="trajectories")
  pr.add_argument("--out", default="optax_nowcast/pretrained")
  pr.add_argument("--data-dir", default=None)
  pr.add_argument("--skip-collect", action="store_true", help="train on the runs already in --runs")
  pr.add_argument("--only", default="wnn_plus,wnn,lfd2", help="which predictors to (re)train")
  rc = sub.add_parser("recipe", help="the diverse recipe in one budgeted command (metatrain.recipe)")
  rc.add_argument("--scale", default="toy", choices=["toy", "cpu", "gpu"])
  rc.add_argument("--out", default="recipe_out")
  rc.add_argument("--runs", default=None, help="where the trajectories go (default: OUT/trajectories)")
  rc.add_argument("--data-dir", default=None)
  rc.add_argument("--budget-minutes", type=float, default=None, help="default: the scale's")
  rc.add_argument("--results", default=None,
                  help="--dry-run: where recipe_<scale>_dry_run.{json,md} go (default: --out)")
  rc.add_argument("--dry-run", action="store_true",
                  help="print the plan and the collection cost measured on this machine; train nothing")
  pk = sub.add_parser("pack-data", help="class-balanced subsets of the datasets, to carry (datasets.pack)")
  pk.add_argument("--out", default=".data_pack")
  pk.add_argument("--data-dir", default=None)
  pk.add_argument("--fm-train", type=int, default=15_000)
  pk.add_argument("--cifar-train", type=int, default=4_000)
  pk.add_argument("--test", type=int, default=2_000)
  cd = sub.add_parser("card", help="record the shipped files' sha256 and rewrite MODEL_CARD.md")
  cd.add_argument("--out", default="optax_nowcast/pretrained")
  args = parser.parse_args(argv)
  if args.command == "pack-data":
    from optax_nowcast.tasks import datasets
    res = datasets.pack(args.out, args.data_dir, args.fm_train, args.cifar_train, args.test)
    for name, r in res.items():
      print(f"{args.out}/{name}: {r['bytes'] / 2**20:.1f} MiB"
            + (f" ({r['train']} train, {r['test']} test)" if "train" in r else ""))
    return res
  if args.command == "recipe":
    import dataclasses

    from optax_nowcast.metatrain import recipe
    scale = recipe.SCALES[args.scale]
    if args.budget_minutes is not None:
      scale = dataclasses.replace(scale, budget_s=60 * args.budget_minutes)
    if args.dry_run:
      res = recipe.dry_run(scale, args.data_dir, args.out)
      target = args.results or args.out
      os.makedirs(target, exist_ok=True)
      stem = os.path.join(target, f"recipe_{args.scale}_dry_run")
      with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=1)
      with open(stem + ".md", "w") as f:
        f.write(recipe.format_dry_run(res, args.scale))
      print(f"wrote {stem}.json and .md")
      return res
    command = f"python -m optax_nowcast.metatrain recipe --scale {args.scale}" + (
        f" --budget-minutes {args.budget_minutes:g}" if args.budget_minutes is not None else "")
    return recipe.run(scale, args.out, args.data_dir, args.runs, command=command)
  if args.command == "card":
    from optax_nowcast.metatrain import pretrained
    print(f"wrote {pretrained.refresh_card(args.out)}")
    return {}
  if args.command == "pretrained":
    from optax_nowcast.metatrain import pretrained
    return pretrained.run(args.runs, args.out, args.data_dir, args.skip_collect, tuple(args.only.split(",")))
  if args.command == "train":
    from optax_nowcast.metatrain import train as train_lib
    runs = train_lib.find_runs(args.runs, args.tasks.split(",") if args.tasks else None)
    print(f"training {args.predictor} on {len(runs)} runs from {args.runs}", flush=True)
    cfg = train_lib.TrainConfig(steps=args.steps, hidden=args.hidden, horizons=args.horizons,
                                elements_per_window=args.elements, seed=args.seed)
    log = lambda m: print(m, flush=True)  # noqa: E731
    if args.predictor == "wnn+":
      res, name = train_lib.train_wnn_plus(runs, cfg, out_dir=args.out, log=log), "wnn_plus"
    elif args.predictor == "wnn":
      res, name = train_lib.train_wnn(runs, cfg, out_dir=args.out, log=log), "wnn"
    elif args.predictor == "nino":
      from optax_nowcast.metatrain.train_nino import NiNoTrainConfig, train_nino
      ncfg = NiNoTrainConfig(steps=args.steps, hidden=args.hidden, horizons=args.horizons, seed=args.seed,
                             head=args.head, node_features=args.node_features, lpe=args.lpe,
                             rnn_hidden=args.rnn_hidden, head_edges=args.head_edges, init=args.init,
                             **({} if args.learning_rate is None else {"learning_rate": args.learning_rate}))
      budget = None if args.budget_minutes is None else 60 * args.budget_minutes
      res, name = train_nino(runs, ncfg, out_dir=args.out, log=log, resume=not args.fresh,
                             time_budget_s=budget), "nino"
      if not res["finished"]:
        print(f"stopped at step {res['step']}/{ncfg.steps}; the checkpoint is in {args.out}/nino.ckpt.*")
        return res
    else:
      res = train_lib.train_lfd_on_runs(runs, cfg, kind=args.predictor, n=args.n, m=args.m,
                                        out_dir=args.out, log=log)
      name = args.predictor
    print(f"validation L1 {res['initial_val_loss']:.4f} -> {res['val_loss']:.4f}; "
          f"wrote {args.out}/{name}.*")
    return res
  variants = [{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
              for d in json.loads(args.variants)]
  runs = plan_runs(_seeds(args.seeds), [float(x) for x in args.lr_scales.split(",")], variants)
  size = estimate_bytes(args.task, runs, args.steps, args.interval)
  print(f"{len(runs)} runs of {args.task}, {args.steps} steps, a state every {args.interval}: "
        f"{size / 2**20:.1f} MiB of float16 states in {args.out}/{args.task}/", flush=True)
  shard = tuple(int(x) for x in args.shard.split("/"))
  res = collect(args.task, runs, steps=args.steps, interval=args.interval, out_dir=args.out,
                data_dir=args.data_dir, vmap=args.vmap, quiet=args.quiet, shard=shard)
  print(f"computed {len(res['computed'])} runs, skipped {len(res['skipped'])} finished ones; "
        f"index {res['index']}", flush=True)
  return res


if __name__ == "__main__":
  main()
