"""Linear probe of the shipped pretrained backbone against a random-init one of the same shape.

Has ``backbone-synth`` (``wav2small pretrain``, HuBERT-style masked prediction on the built-in
corpus's unlabelled ``pool`` split) learned something? For every encoder layer, the frozen
features of a clip are averaged over time (and, as a second view, their standard deviation
over time is appended) and read out linearly (:mod:`wav2small.probe`: ridge
regression → CCC of arousal, dominance, valence; ridge classifier → UAR of the 5 ``emotion``
classes; penalties by 5-fold cross-validation on the training clips). The same probe on a
randomly initialised backbone of the same config is the baseline. Training clips: the synthetic
``train`` split; test clips: the ``test`` split (new speakers and texts), seed 0 — neither was
seen in pretraining.

Writes ``OUT/results.csv``, ``OUT/results.md`` and ``OUT/probe.png``; ``--json`` the figures
for docs/RESULTS.md.

Run: ``nice .venv/bin/python benchmarks/bench_backbone.py [--train 600 --test 300]``;
``--also NAME=SPEC`` adds backbones (folders, ``random:<preset>``) to the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_backbone")
    p.add_argument("--backbone", default="backbone-synth", help="the pretrained backbone")
    p.add_argument("--train", type=int, default=600, help="synthetic train clips (probe fit)")
    p.add_argument("--test", type=int, default=300, help="synthetic test clips (probe score)")
    p.add_argument("--corpus", help="a folder with train.csv and test.csv instead of generating")
    p.add_argument("--also", nargs="*", default=[], help="more backbones as NAME=SPEC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="corpus generation workers")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the features")
    p.add_argument("--json", help="write the summary figures here")
    return p.parse_args()


def corpus(args, root: Path) -> tuple[Path, Path]:
    from wav2small.synth import generate

    if args.corpus:
        return Path(args.corpus) / "train.csv", Path(args.corpus) / "test.csv"
    paths = []
    for split, n in (("train", args.train), ("test", args.test)):
        paths.append(generate(split, n, root, seed=args.seed, jobs=args.jobs, progress=False))
    return paths[0], paths[1]


def subset(csv: Path, n: int, out: Path) -> Path:
    """The first ``n`` rows of a manifest (paths made absolute) — for ``--corpus``."""
    from wav2small.inputs import read_manifest

    table = read_manifest(csv).head(n)
    table["file"] = table["path"]
    out.parent.mkdir(parents=True, exist_ok=True)
    table.drop(columns=["path"]).to_csv(out, index=False)
    return out


def random_twin(spec: str, seed: int):
    """A randomly initialised backbone with the config of ``spec``."""
    import torch

    from wav2small.models.exits import load_backbone

    trained = load_backbone(spec)
    torch.manual_seed(seed)
    return type(trained)(trained.config)


def cached_features(spec, manifest: pd.DataFrame, folder: Path):
    """``layer_features`` (mean+std) of a backbone on a manifest's clips, kept in ``folder``
    under a fingerprint of the weights and the file list (a rerun reuses them)."""
    import hashlib

    import numpy as np

    from wav2small.models.exits import load_backbone
    from wav2small.probe import layer_features

    module = spec if not isinstance(spec, str | os.PathLike) else load_backbone(spec)
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    digest.update("\n".join(manifest["path"]).encode())
    path = folder / f"{digest.hexdigest()[:20]}.npy"
    if path.is_file():
        return np.load(path)
    feats = layer_features(module, manifest["path"].tolist(), pooling="mean+std")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, feats)
    os.replace(tmp, path)
    return feats


def markdown(table: pd.DataFrame) -> str:
    lines = [
        "| backbone | pooling | layer | CCC arousal | CCC dominance | CCC valence | CCC mean "
        "| UAR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.backbone} | {r.pooling} | {r.layer} | {r.ccc_arousal:.3f} | "
            f"{r.ccc_dominance:.3f} | "
            f"{r.ccc_valence:.3f} | {r.ccc_mean:.3f} | {r.uar:.3f} |"
        )
    return "\n".join(lines)


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wav2small.inputs import atomic_write

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for (name, pooling), rows in table.groupby(["backbone", "pooling"], sort=False):
        style = "o-" if pooling == "mean" else "s--"
        axes[0].plot(rows.layer, rows.ccc_mean, style, label=f"{name}, {pooling}")
        axes[1].plot(rows.layer, rows.uar, style, label=f"{name}, {pooling}")
    axes[0].set_ylabel("CCC, mean of A/D/V (test)")
    axes[1].set_ylabel("UAR, 5 emotion classes (test)")
    axes[1].axhline(0.2, color="grey", linestyle=":", label="chance")
    for ax in axes:
        ax.set_xlabel("encoder layer (frozen, mean-pooled, linear read-out)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def main() -> int:
    args = parse_args()
    import torch

    from wav2small.inputs import read_manifest
    from wav2small.probe import POOLINGS, probe_poolings

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_csv, test_csv = corpus(args, out / "corpus")
    if args.corpus:
        train_csv = subset(train_csv, args.train, out / "probe" / "train.csv")
        test_csv = subset(test_csv, args.test, out / "probe" / "test.csv")
    backbones = {"pretrained": args.backbone, "random init": random_twin(args.backbone, args.seed)}
    for item in args.also:
        name, _, spec = item.partition("=")
        backbones[name] = spec
    manifests = [read_manifest(p) for p in (train_csv, test_csv)]
    tables = []
    for name, spec in backbones.items():
        t0 = time.perf_counter()
        feats = [cached_features(spec, m, out / "features") for m in manifests]
        table = probe_poolings(*feats, *manifests, poolings=POOLINGS)
        table.insert(0, "backbone", name)
        tables.append(table)
        print(f"{name}: probed in {time.perf_counter() - t0:.0f} s", flush=True)
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(out / "results.csv", index=False)
    md = markdown(table)
    note = (
        f"backbone {args.backbone}; probe fit on {args.train} synthetic train clips, scored on "
        f"{args.test} test clips (seed {args.seed}); total {time.perf_counter() - started:.0f} s"
    )
    (out / "results.md").write_text(md + "\n\n" + note + "\n")
    plot(table, out / "probe.png")
    print(md)
    print(note)
    for key in ("ccc_mean", "uar"):
        best = table.loc[table.groupby(["backbone", "pooling"], sort=False)[key].idxmax()]
        for r in best.itertuples():
            print(
                f"best {key} of {r.backbone}, {r.pooling}: layer {r.layer}, {getattr(r, key):.3f}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"table": table.to_dict("records")}, indent=2))
    print(f"table {out / 'results.md'}, plot {out / 'probe.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
