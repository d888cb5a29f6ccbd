"""``embedplug mine DATA --model PATH --output DIR``: hard negatives for a pairs file, written as a ``datasets`` folder."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

SUMMARY_FILE = "mining_summary.json"


def add_mine_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "mine",
        help="mine hard negatives for (anchor, positive) pairs with an embedding model",
        description=(
            "Add hard negatives to (anchor, positive) pairs read from CSV/TSV, JSON Lines or a `datasets` folder, "
            "exactly as sentence-transformers' mine_hard_negatives does (same options, same output), with an "
            "exact streamed search and an embedding cache. Writes a `datasets` folder and prints a summary. "
            "See docs/mining.md."
        ),
    )
    parser.add_argument("data", type=Path, help="the pairs: .csv/.tsv, .json/.jsonl, or a save_to_disk folder")
    parser.add_argument("--model", required=True, help="the SentenceTransformer to embed with (a local folder)")
    parser.add_argument("--output", required=True, type=Path, help="folder to write the mined dataset to")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    columns = parser.add_argument_group("columns and corpus")
    columns.add_argument("--anchor-column", help="anchor/query column (default: the first)")
    columns.add_argument("--positive-column", help="positive column (default: the second)")
    columns.add_argument(
        "--corpus", type=Path, help="more candidate texts: a .txt file (one per line), or a table / folder"
    )
    columns.add_argument("--corpus-column", help="the text column of a --corpus table (default: the first)")
    selection = parser.add_argument_group("which negatives (sentence-transformers' arguments)")
    selection.add_argument("--num-negatives", type=int, default=3)
    selection.add_argument("--range-min", type=int, default=0)
    selection.add_argument("--range-max", type=int)
    selection.add_argument("--max-score", type=float)
    selection.add_argument("--min-score", type=float)
    selection.add_argument("--absolute-margin", type=float)
    selection.add_argument("--relative-margin", type=float)
    selection.add_argument("--sampling-strategy", choices=("top", "random"), default="top")
    selection.add_argument("--seed", type=int, default=0, help="seed for --sampling-strategy random (default 0)")
    selection.add_argument("--include-positives", action="store_true")
    selection.add_argument("--cross-encoder", help="a CrossEncoder folder to rescore the candidates with")
    output = parser.add_argument_group("output")
    output.add_argument(
        "--output-format", choices=("triplet", "n-tuple", "labeled-pair", "labeled-list"), default="triplet"
    )
    output.add_argument("--output-scores", action="store_true")
    encoding = parser.add_argument_group("encoding")
    encoding.add_argument("--query-prompt-name")
    encoding.add_argument("--query-prompt")
    encoding.add_argument("--corpus-prompt-name")
    encoding.add_argument("--corpus-prompt")
    encoding.add_argument("--batch-size", type=int, default=32)
    encoding.add_argument("--query-chunk-size", type=int, default=16384, help="queries per search call")
    encoding.add_argument("--device", help="torch device for the model (default: what sentence-transformers picks)")
    encoding.add_argument("--max-seq-length", type=int, help="truncate texts to this many tokens")
    encoding.add_argument("--cache-dir", type=Path, help="embedding cache folder (default ~/.cache/embedplug/embeddings)")
    encoding.add_argument("--no-cache", action="store_true", help="embed everything afresh and cache nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_mine)


def run_mine(args: argparse.Namespace) -> int:
    # Models load from local folders only, as `embedplug train` does.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return _run(args)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"embedplug mine: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from embedplug.data.local import read_dataset

    if args.quiet:
        _hide_library_progress_bars()
    if args.output.exists() and not args.output.is_dir():
        raise ValueError(f"--output {args.output} is a file; name a folder")
    if args.output.exists() and any(args.output.iterdir()) and not args.overwrite:
        raise ValueError(f"{args.output} exists and is not empty; pass --overwrite to replace it")
    dataset = read_dataset(args.data)
    for name in (args.anchor_column, args.positive_column):
        if name and name not in dataset.column_names:
            raise ValueError(f"{args.data} has no column {name!r}; it has {', '.join(map(repr, dataset.column_names))}")
    corpus = _read_corpus(args.corpus, args.corpus_column) if args.corpus else None

    from sentence_transformers import SentenceTransformer

    from embedplug.mining.hard_negatives import mine

    model = SentenceTransformer(args.model, device=args.device)
    if args.max_seq_length:
        model.max_seq_length = args.max_seq_length
    cross_encoder = None
    if args.cross_encoder:
        from sentence_transformers import CrossEncoder

        cross_encoder = CrossEncoder(args.cross_encoder, device=args.device)
    random.seed(args.seed)
    result = mine(
        dataset,
        model,
        anchor_column_name=args.anchor_column,
        positive_column_name=args.positive_column,
        corpus=corpus,
        cross_encoder=cross_encoder,
        range_min=args.range_min,
        range_max=args.range_max,
        max_score=args.max_score,
        min_score=args.min_score,
        absolute_margin=args.absolute_margin,
        relative_margin=args.relative_margin,
        num_negatives=args.num_negatives,
        sampling_strategy=args.sampling_strategy,
        query_prompt_name=args.query_prompt_name,
        query_prompt=args.query_prompt,
        corpus_prompt_name=args.corpus_prompt_name,
        corpus_prompt=args.corpus_prompt,
        include_positives=args.include_positives,
        output_format=args.output_format,
        output_scores=args.output_scores,
        batch_size=args.batch_size,
        faiss_batch_size=args.query_chunk_size,
        verbose=False,
        cache_folder=str(args.cache_dir) if args.cache_dir else None,
        embedding_cache=not args.no_cache,
        progress=not args.quiet,
    )
    if args.output.exists() and args.overwrite:
        import shutil

        shutil.rmtree(args.output)
    result.dataset.save_to_disk(str(args.output))
    summary = result.report.to_json()
    summary["data"], summary["model"] = str(args.data), args.model
    (args.output / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    print(result.report.format_summary())
    print(f"\nWrote {result.dataset.num_rows:,} rows to {args.output} (summary in {SUMMARY_FILE}).")
    return 0


def _hide_library_progress_bars() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _read_corpus(path: Path, column: str | None) -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"corpus file {path} not found")
    if path.suffix.lower() == ".txt":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    from embedplug.data.local import read_dataset

    table = read_dataset(path)
    column = column or table.column_names[0]
    if column not in table.column_names:
        raise ValueError(f"{path} has no column {column!r}; it has {', '.join(map(repr, table.column_names))}")
    return [str(text) for text in table[column]]
