"""Notes for merges of models that share their initialisation.

Two models trained from the same initialisation (``train`` defaults to ``--seed 0``, so two
models trained with defaults do) already sit in one basin: weight matching returns the
identity permutation and the "aligned" merge equals plain averaging, which flatters naive
averaging in any comparison. A merge says so in its output instead of staying silent.
"""

from __future__ import annotations

import torch

from ..checkpoint import Checkpoint
from ..permutation.spec import Permutation

# Cosine similarity of the flattened weights: about 0 for independently initialised models
# (trained or not, at the scales used here), close to 1 for models trained from one init.
CLOSE_COSINE = 0.2


@torch.no_grad()
def weight_cosine(a: Checkpoint, b: Checkpoint) -> float:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    dot = na = nb = 0.0
    for k, va in sa.items():
        if not va.is_floating_point() or va.ndim < 2:  # weights only: biases and BN stats are not init noise
            continue
        x, y = va.double().flatten(), sb[k].double().flatten()
        dot += float(x @ y)
        na += float(x @ x)
        nb += float(y @ y)
    return dot / (na * nb) ** 0.5 if na > 0 and nb > 0 else 0.0


def is_identity(perm: Permutation | None) -> bool:
    return perm is not None and all(torch.equal(p.cpu(), torch.arange(len(p))) for p in perm.values())


def same_init_notes(a: Checkpoint, b: Checkpoint, perm: Permutation | None, method: str) -> list[str]:
    """Plain-sentence notes (empty when nothing is suspicious)."""
    notes: list[str] = []
    seed_a, seed_b = a.meta.get("seed"), b.meta.get("seed")
    trained = a.meta.get("permerge_kind") == b.meta.get("permerge_kind") == "trained"
    if trained and seed_a is not None and seed_a == seed_b:
        notes.append(
            f"both models were trained with seed {seed_a}, so they share their initialisation; "
            "train model B with another --seed for a merge of independent models"
        )
    if is_identity(perm):
        notes.append(
            f"the {method} alignment is the identity permutation: B's units already match A's "
            "(same initialisation?), so this merge equals plain averaging"
        )
    cos = weight_cosine(a, b)
    if cos > CLOSE_COSINE:
        notes.append(
            f"the models' weights are much closer than those of independently initialised models "
            f"(cosine similarity {cos:.2f}, typically about 0): they probably share their initialisation"
        )
    return notes
