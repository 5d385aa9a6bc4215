"""Build docs/results.md and its pictures from the CamVid runs of ``camvid.sh``.

Reads, for each run in ``work_dirs/camvid/<config>/``: ``log.jsonl`` (training), the val
``metrics.json`` written at the end of training, ``eval_test_whole.json`` written by
``seg-eval --split test``, and ``/usr/bin/time -v`` outputs. Writes the tables to stdout (the
caller pastes them into docs/results.md) and two PNGs into docs/:
``camvid_curves.png`` (training loss against iteration and against wall time, val mIoU) and
``camvid_predictions.png`` (a few test images: image | ground truth | each model).

    python tests/benchmarks/camvid_report.py [CAMVID_ROOT] [--pauses SECONDS_PER_RUN_JSON]
        [--pause-log FILE] [--runs CONFIG ...] [--tag NAME]

``--runs`` picks the configs of one benchmark run (default: the issue-8 five); ``--tag`` names
the pictures ``camvid_<tag>_curves.png`` / ``camvid_<tag>_predictions.png``; ``--pause-log``
reads ``stop <unix time> camvid/<config>.yaml`` / ``cont ...`` lines (SIGSTOP pauses taken to
keep other measurements off the CPU) and takes each pause out of the run it fell in.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "work_dirs" / "camvid"
ORDER = [
    "pspnet_r18-deep_camvid_288x288",
    "deeplabv3_r18-deep_camvid_288x288",
    "denseaspp_r18-deep_camvid_288x288",
    "lraspp_mobilenet-v3-large_camvid_288x288",
    "deeplabv3_mobilenet-v3-large_camvid_288x288",
]


def _time_v(path: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) from a /usr/bin/time -v file."""
    text = path.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    parts = [float(p) for p in wall.split(":")]
    secs = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    rss_kb = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return secs, rss_kb / 1024


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("root", nargs="?", default=str(ROOT.parent / "shared" / "data" / "camvid"))
    p.add_argument(
        "--pauses",
        default="{}",
        help='JSON {"config": [seconds paused during iterations, seconds paused in all]}: runs '
        "that were SIGSTOPped to keep other measurements clean",
    )
    p.add_argument("--pause-log", help="stop/cont lines of SIGSTOP pauses (see the docstring)")
    p.add_argument("--runs", nargs="+", default=ORDER, help="config names, in table order")
    p.add_argument("--tag", default="", help="picture name tag: camvid_<tag>_curves.png")
    args = p.parse_args()
    pauses = {k: tuple(v) for k, v in json.loads(args.pauses).items()}
    runs = [RUNS / n for n in args.runs if (RUNS / n / "eval_test_whole.json").exists()]
    if args.pause_log:
        pauses.update(_pauses_from_log(Path(args.pause_log), runs))
    if not runs:
        raise SystemExit(f"no finished runs under {RUNS}")

    rows, per_class, names = [], [], None
    for run in runs:
        cfg = run.name
        log = _log(run)
        train = [r for r in log if r["type"] == "train"]
        val = [r for r in log if r["type"] == "val"]
        best_val = max(val, key=lambda r: r["mIoU"], default=None)
        test = json.loads((run / "eval_test_whole.json").read_text())["metrics"]
        names = test["class_names"]
        wall_train, rss_train = _time_v(run / "time_train.txt")
        loop_pause, wall_pause, *spans = pauses.get(cfg, (0.0, 0.0))
        spans = spans[0] if spans else []
        wall_train -= wall_pause
        wall_test, _ = _time_v(run / "time_test.txt")
        iters = train[-1]["iter"]

        c = yaml.safe_load((run / "config.yaml").read_text())
        batch = c["data"]["batch_size"]
        # training time proper: time_per_iter is the mean over each log interval
        t_iter = float(_interval_seconds(train, loop_pause, spans, log[0]["time"]).sum())
        rows.append(
            {
                "config": cfg,
                "model": c["model"]["name"],
                "backbone": c["model"]["backbone"],
                "test_miou": test["miou"],
                "test_aacc": test["aacc"],
                # best.pth (the checkpoint evaluated on test) is the best val mIoU
                "val_miou": best_val["mIoU"] if best_val else float("nan"),
                "val_iter": best_val["iter"] if best_val else -1,
                "iters": iters,
                "train_s": t_iter,
                "wall_s": wall_train,
                "img_s": iters * batch / t_iter,
                "paused_s": wall_pause,
                "rss": rss_train,
                "test_s": wall_test,
            }
        )
        per_class.append(test["per_class"]["iou"])

    print(
        "| model | backbone | test mIoU | test aAcc | val mIoU (best, at iter) | iterations | train loop time | images/s | run wall time | paused | peak RSS | test eval time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['backbone']} | **{100 * r['test_miou']:.2f}** | {100 * r['test_aacc']:.2f} | "
            f"{100 * r['val_miou']:.2f} ({r['val_iter']}) | {r['iters']} | {r['train_s'] / 60:.1f} min | {r['img_s']:.2f} | "
            f"{r['wall_s'] / 60:.1f} min | {r['paused_s']:.0f} s | {r['rss'] / 1024:.1f} GiB | {r['test_s'] / 60:.1f} min |"
        )
    print()
    print("| class | " + " | ".join(r["model"].replace("torchvision:", "tv:") for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for k, name in enumerate(names):
        vals = [100 * pc[k] if pc[k] is not None else float("nan") for pc in per_class]
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")

    tag = f"_{args.tag}" if args.tag else ""
    _curves(runs, pauses, ROOT / "docs" / f"camvid{tag}_curves.png")
    _predictions(runs, Path(args.root), ROOT / "docs" / f"camvid{tag}_predictions.png")


def _pauses_from_log(path: Path, runs: list[Path]) -> dict[str, tuple]:
    """``{config: (seconds paused inside its training loop, seconds paused in all, spans)}``.

    Each ``stop``/``cont`` pair names the config whose process it paused; the part of a pause
    inside the run's training loop (its log's first to last record) is taken out of the loop
    time, the whole pause out of the run's wall time. Only training runs may be paused: a
    pause of the test evaluation would stay in its time.
    """
    spans: dict[str, list[tuple[float, float]]] = {}
    start: tuple[float, str] | None = None
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        kind, stamp, *rest = line.split()
        cfg = Path(rest[0]).stem if rest else ""
        if kind == "stop" and start is None:
            start = (float(stamp), cfg)
        elif kind == "cont" and start is not None:
            spans.setdefault(start[1], []).append((start[0], float(stamp)))
            start = None
    out: dict[str, tuple] = {}
    for run in runs:
        if run.name not in spans:
            continue
        log = _log(run)
        lo, hi = log[0]["time"], log[-1]["time"]
        loop = sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in spans[run.name])
        out[run.name] = (loop, sum(b - a for a, b in spans[run.name]), spans[run.name])
    return out


def _interval_seconds(
    train: list[dict], pause: float, spans: list[tuple[float, float]] = (), start: float = 0.0
) -> np.ndarray:
    """Seconds spent in each log interval, SIGSTOP pauses taken out.

    With ``spans`` (the pauses' wall-clock windows; ``start``: the log's first record) each
    pause comes out of the intervals it overlaps; else ``pause`` seconds come out of the
    intervals slower than the median, in proportion to their excess.
    """
    n = np.diff([0] + [r["iter"] for r in train])
    tpi = np.array([r["time_per_iter"] for r in train])
    secs = tpi * n
    if spans:
        ends = [r["time"] for r in train]
        for i, (lo, hi) in enumerate(zip([start, *ends[:-1]], ends, strict=True)):
            secs[i] -= sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in spans)
    elif pause:
        excess = np.clip(tpi - np.median(tpi), 0, None) * n
        secs = secs - pause * excess / excess.sum()
    return secs


def _curves(runs: list[Path], pauses: dict[str, tuple], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for run in runs:
        log = _log(run)
        train = [r for r in log if r["type"] == "train"]
        val = [r for r in log if r["type"] == "val"]
        it = [r["iter"] for r in train]
        loop_pause, _, *spans = pauses.get(run.name, (0.0, 0.0))
        t = np.cumsum(
            _interval_seconds(train, loop_pause, spans[0] if spans else [], log[0]["time"])
        )
        label = run.name.replace("_camvid_288x288", "")
        # the main head's (first) loss term: the total adds the aux / boundary / detail terms
        first = yaml.safe_load((run / "config.yaml").read_text())["loss"]["out"][0]["name"]
        key = next((k for k in ("loss_out", f"loss_out_{first}") if k in train[-1]), "loss")
        loss = [r.get(key, r["loss"]) for r in train]
        ax[0].plot(it, loss, label=label)
        ax[1].plot(t / 60, loss, label=label)
        ax[2].plot([r["iter"] for r in val], [100 * r["mIoU"] for r in val], "o-", label=label)
    ax[0].set(title="training loss (main head, first term)", xlabel="iteration", xscale="log")
    ax[1].set(title="training loss (main head, first term)", xlabel="training time (min)")
    ax[2].set(title="val mIoU (%), half-way and end", xlabel="iteration", xscale="log")
    for a in ax:
        a.grid(alpha=0.3)
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def _predictions(
    runs: list[Path], root: Path, path: Path, indices: tuple[int, ...] = (0, 80, 200)
) -> None:
    from PIL import Image

    from seg_data import colorize, create_dataset
    from seg_trainer.checkpoint import load_checkpoint
    from seg_trainer.config import config_from_dict
    from seg_trainer.evaluate import load_model
    from seg_trainer.inference import predict_logits

    raw = create_dataset("camvid", root=str(root), split="test")
    columns = []
    for run in runs:
        ckpt = load_checkpoint(run / "checkpoints" / "best.pth")
        cfg = config_from_dict(ckpt["config"])
        cfg.data.root = str(root)
        model = load_model(cfg, ckpt, run).eval()
        from seg_trainer.build import build_dataset

        ds = build_dataset(cfg, "test")
        preds = []
        with torch.no_grad():
            for i in indices:
                x = ds[i]["image"][None]
                logits = predict_logits(model, x, num_classes=cfg.model.num_classes)
                preds.append(logits.argmax(1)[0].numpy())
        columns.append(preds)
    tiles = []
    for row, i in enumerate(indices):
        s = raw[i]
        img = s["image"].permute(1, 2, 0).numpy().clip(0, 255).astype(np.uint8)
        gt = colorize(s["label"].numpy(), raw.palette)
        tiles.append(
            np.concatenate([img, gt] + [colorize(c[row], raw.palette) for c in columns], axis=1)
        )
    grid = np.concatenate(tiles, axis=0)
    im = Image.fromarray(grid)
    im = im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR)
    im.save(path, optimize=True)
    print(
        f"\ncolumns of docs/{path.name}: image | ground truth | " + " | ".join(r.name for r in runs)
    )


if __name__ == "__main__":
    main()
