"""``embedplug train CONFIG``: fine-tune a sentence-transformers model from a TOML or YAML config."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path


def config_outline() -> str:
    """The config's sections and keys, as :mod:`embedplug.train.config` documents them (one source)."""
    from embedplug.train import config

    outline = (config.__doc__ or "").split("::\n\n", 1)[-1].split("\n\n", 1)[0]
    return textwrap.dedent(outline)


def add_train_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune an embedding model from a config naming registry losses and samplers",
        description=(
            "Fine-tune a sentence-transformers model with SentenceTransformerTrainer from a TOML or YAML "
            "config: model, data (a built-in WordNet task or local files), loss and sampler by registry name, "
            "training arguments. Evaluates on held-out data before and after, and writes the model and "
            "metrics.json to the output directory."
        ),
        epilog=(
            "config sections (every key optional; `embedplug plugins` lists the loss and sampler names):\n\n"
            + textwrap.indent(config_outline(), "  ")
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", type=Path, help="the config file (.toml, .yaml or .yml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set training.max_steps=50 (repeatable; VALUE is read as TOML)",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="continue from the newest checkpoint in the output directory, or from CHECKPOINT",
    )
    start.add_argument("--overwrite", action="store_true", help="replace a previous run in the output directory")
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bars (data loading, evaluation and training)"
    )
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    # Models load from local folders only; offline mode stops transformers from trying the hub first.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from embedplug.train.config import ConfigError, load_config
    from embedplug.train.run import run_training

    try:
        config = load_config(args.config, args.overrides)
        run_training(config, resume=args.resume, overwrite=args.overwrite, show_progress_bar=not args.no_progress)
    except ConfigError as exc:
        print(f"embedplug train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        message = "interrupted; continue with --resume (from the last saved checkpoint)"
        print(f"\nembedplug train: {message}", file=sys.stderr)
        return 130
    return 0

