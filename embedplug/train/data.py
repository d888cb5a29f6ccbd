"""The configured training data: a built-in WordNet task or local files."""

from __future__ import annotations

from embedplug.data.tasks import TASKS, TrainingData, evaluation, load_task, wordnet_split
from embedplug.data.wordnet import WordNetMissingError, find_wordnet_dir
from embedplug.train.config import ConfigError, TrainConfig


def load_training_data(config: TrainConfig) -> TrainingData:
    """Training rows and held-out evaluations for ``config``; errors name the key to fix."""
    data = config.data
    evaluate = list(config.evaluation.tasks)
    unknown = [name for name in evaluate if name not in TASKS]
    if unknown:
        raise ConfigError(
            f"{config.where('evaluation.tasks')}: unknown evaluation task(s) {', '.join(map(repr, unknown))}; "
            f"built-in tasks: {', '.join(TASKS)}"
        )
    try:
        if data.task:
            if data.task not in TASKS:
                raise ConfigError(
                    f"{config.where('data.task')}: unknown task {data.task!r}; built-in tasks: {', '.join(TASKS)} "
                    "(or set data.path to your own CSV / JSONL / datasets folder)"
                )
            return load_task(
                data.task,
                wordnet_dir=data.wordnet_dir or None,
                train_size=data.train_size or None,
                evaluate=evaluate or None,
                queries=config.evaluation.queries or None,
                references=config.evaluation.references or None,
            )
        from embedplug.data.local import load_local

        loaded = load_local(
            data.path,
            eval_path=data.eval_path,
            data_format=data.format,
            columns=data.columns,
            label_column=data.label_column,
            train_size=data.train_size,
            queries=config.evaluation.queries,
            references=config.evaluation.references,
        )
        if evaluate:  # WordNet evaluations beside the user's own, e.g. to check nothing else got worse
            train, held_out = wordnet_split(str(find_wordnet_dir(data.wordnet_dir or None)))
            sizes = (config.evaluation.queries or None, config.evaluation.references or None)
            loaded.evaluations += [evaluation(name, train, held_out, *sizes) for name in evaluate]
        return loaded
    except WordNetMissingError as exc:
        raise ConfigError(str(exc)) from None
    except (FileNotFoundError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{config.where('data')}: {exc}") from None
