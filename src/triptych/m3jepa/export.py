"""Export embeddings of an encoded dataset: NPY matrices plus Parquet metadata, for other tools.

Without an aligner the encoders' own pooled vectors are exported (``image.npy`` N x D_img,
``text.npy`` M x D_txt); with one (a trained checkpoint or ensemble), the aligned search
vectors an index would hold (``image.npy`` / ``text.npy``: keys, N x P / M x P; when the
aligner fuses both directions also ``image_own.npy`` / ``text_own.npy``, each item's own
prediction of the other modality). ``images.parquet`` (row, id, path) and
``captions.parquet`` (row, id, caption, image_row) say what each row is; ``export.json``
records where the vectors came from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from triptych.core.io import atomic_output_dir


def export_embeddings(
    cache: str | os.PathLike,
    out: str | os.PathLike,
    aligner: Any = None,
    split: str | None = None,
    **record: Any,
) -> Path:
    """Write the embeddings of ``cache`` (optionally one ``split``) into the folder ``out``; returns it."""
    import pandas as pd

    from triptych.m3jepa.features import load_cache

    paired = load_cache(cache)
    if split:
        image_rows, caption_rows, caption_image = paired.split(split)
    else:
        image_rows, caption_rows = np.arange(len(paired.image)), np.arange(len(paired.text))
        caption_image = np.asarray(paired.data.caption_image)
    with atomic_output_dir(out) as staging:
        if aligner is None:
            arrays = {"image": paired.image.pooled[image_rows], "text": paired.text.pooled[caption_rows]}
            kind = "pooled encoder features"
        else:
            from triptych.m3jepa.search import index_cache

            index = index_cache(aligner, cache, split)
            arrays = {"image": index.image_keys.numpy(), "text": index.text_keys.numpy()}
            if index.fused:
                arrays |= {"image_own": index.image_queries.numpy(), "text_own": index.text_queries.numpy()}
            kind = "aligned keys" + (" and own predictions" if index.fused else "")
        for name, array in arrays.items():
            np.save(staging / f"{name}.npy", np.asarray(array, dtype=np.float32))
        pd.DataFrame(
            {
                "row": np.arange(len(image_rows)),
                "id": [paired.image.ids[int(i)] for i in image_rows],
                "path": [str(paired.data.image_path(int(i))) for i in image_rows],
            }
        ).to_parquet(staging / "images.parquet", index=False)
        pd.DataFrame(
            {
                "row": np.arange(len(caption_rows)),
                "id": [paired.text.ids[int(j)] for j in caption_rows],
                "caption": [paired.data.captions[int(j)] for j in caption_rows],
                "image_row": np.asarray(caption_image, dtype=np.int64),
            }
        ).to_parquet(staging / "captions.parquet", index=False)
        meta = {
            "cache": str(cache),
            "split": split,
            "vectors": kind,
            "shapes": {k: list(np.shape(v)) for k, v in arrays.items()},
            "encoders": {m: f.encoder for m, f in (("image", paired.image), ("text", paired.text))},
            **record,
        }
        (staging / "export.json").write_text(json.dumps(meta, indent=1))
    return Path(out)
