"""Querybank normalisation (QB-norm; Bogolin et al., CVPR 2022, inverted-softmax form).

Some items are "hubs", close to many queries. A bank of queries that will *not* be searched
with (the training split's captions) measures each indexed item's hubness, and a search
ranks by the score less it:

    s'(q, i) = s(q, i) - b_i,   b_i = (1/β) log Σ_{c in bank} exp(β s(c, i))        (QB-norm)

which is the log of the inverted softmax exp(β s(q,i)) / Σ_c exp(β s(c,i)), divided by β.
Image queries against captions use a bank of training images the same way.

The bank x items score matrix is never formed whole: :func:`hubness` walks blocks of items
and, inside each, blocks of the bank, keeping one running log-sum-exp per item, so memory
is bank_chunk x item_chunk scores whatever the collection size (at N = 10⁶ items and a bank
of 10⁴ the whole matrix would be 40 GB).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from triptych.core.errors import InputError
from triptych.m3jepa.features import Features
from triptych.m3jepa.index_store import SearchIndex
from triptych.m3jepa.retrieval import embed_rows


def hubness(
    bank: torch.Tensor,
    items: Callable[[int, int], torch.Tensor],
    count: int,
    beta: float,
    scale: float = 1.0,
    bank_chunk: int = 16384,
    item_chunk: int = 2048,
) -> torch.Tensor:
    """b_i = (1/β) log Σ_c exp(β (c · K_i) / scale) for items i < ``count``; ``items(start, stop)`` gives K rows.

    One matrix product per block of items (items x bank, so the sum runs along contiguous
    memory), then a log-sum-exp computed in place: memory is item_chunk x bank_chunk scores.
    """
    if beta <= 0:
        raise InputError(f"the querybank temperature beta must be > 0 (got {beta})")
    if len(bank) == 0:
        raise InputError("the querybank is empty")
    bank = bank.float() * (beta / scale)  # β/c folded into the bank once, not into every score
    out = torch.empty(count, dtype=torch.float32)
    for start in range(0, count, item_chunk):
        stop = min(start + item_chunk, count)
        keys = items(start, stop).float()
        total = None
        for b in range(0, len(bank), bank_chunk):
            s = keys @ bank[b : b + bank_chunk].T  # β s(c, i) / c, items x bank
            top = s.amax(1, keepdim=True)
            part = s.sub_(top).exp_().sum(1).log_().add_(top[:, 0])  # log Σ_c exp, without overflow
            total = part if total is None else torch.logaddexp(total, part)
        out[start:stop] = total / beta
    return out


def querybank_bias(
    bank: torch.Tensor,
    index: SearchIndex,
    modality: str,
    beta: float,
    bank_chunk: int = 16384,
    item_chunk: int = 2048,
) -> torch.Tensor:
    """b_i for every indexed ``modality`` item (QB-norm), from the bank's query vectors, in bounded memory."""
    count = index.count(modality)
    return hubness(
        bank, lambda s, e: index.key_rows(modality, s, e), count, beta, index.scale, bank_chunk, item_chunk
    )


def bank_queries(
    aligner: Any, bank: Any, split: str | None = "train", size: int = 10000, fused: bool = True
) -> dict[str, torch.Tensor]:
    """Query vectors of a querybank: at most ``size`` evenly spaced captions and images of ``bank``'s split.

    ``bank`` is an encoded dataset (:class:`~triptych.m3jepa.features.PairedCache`) made with the
    aligner's encoders; ``split`` picks its rows (None: all). Returns {"text": C x P, "image": I x P},
    the same vectors a search would make of those items (:func:`~triptych.m3jepa.search.query_vectors`).
    """
    from triptych.m3jepa.search import check_encoder, query_vectors

    if split:
        image_rows, caption_rows, _ = bank.split(split)
    else:
        image_rows, caption_rows = np.arange(len(bank.image)), np.arange(len(bank.text))
    check_encoder(aligner, "text", bank.text)
    check_encoder(aligner, "image", bank.image)

    def spaced(rows: np.ndarray) -> np.ndarray:
        return (
            rows[np.unique(np.linspace(0, len(rows) - 1, min(size, len(rows))).astype(int))]
            if len(rows)
            else rows
        )

    feats: dict[str, Features] = {"text": bank.text, "image": bank.image}
    return {
        src: embed_rows(
            lambda b, src=src, tgt=tgt: query_vectors(aligner, src, tgt, b, fused),
            feats[src],
            spaced(rows),
            normalise=False,
        )
        for src, tgt, rows in (("text", "image", caption_rows), ("image", "text", image_rows))
    }


def add_querybank(
    index: SearchIndex, queries: dict[str, torch.Tensor], beta: float = 20.0, **record: Any
) -> SearchIndex:
    """Attach QB-norm biases to ``index``: its images' from the bank's captions, its captions' from its images.

    ``queries`` comes from :func:`bank_queries`; the bank's items must not be the queries you
    will search with (use the training split). ``record`` notes where the bank came from.
    """
    index.image_bias = querybank_bias(queries["text"], index, "image", beta)
    index.querybank = {"beta": beta, **record, "captions": len(queries["text"])}
    if index.text_keys is not None:
        index.text_bias = querybank_bias(queries["image"], index, "text", beta)
        index.querybank["images"] = len(queries["image"])
    return index
