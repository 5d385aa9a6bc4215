"""Command line: ``python -m seg_data check --dataset NAME --root PATH [--split val]``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .datasets import list_datasets
from .doctor import check_dataset


def _option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seg_data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check a dataset folder (the dataset doctor)")
    check.add_argument("--dataset", required=True, choices=list_datasets())
    check.add_argument("--root", default=None, help="dataset folder")
    check.add_argument("--split", default="val")
    check.add_argument("--limit", type=int, default=None, help="check only the first N pairs")
    check.add_argument(
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset option, e.g. --option label_type=trainIds (JSON values)",
    )
    args = parser.parse_args(argv)
    options = dict(args.option)
    for reserved in ("root", "split", "limit", "name"):
        if reserved in options:
            parser.error(f"use --{reserved} instead of --option {reserved}=...")
    report = check_dataset(args.dataset, args.root, split=args.split, limit=args.limit, **options)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
