"""Workers for test_core_batch.py, in a module of their own: Ray's worker processes import it
(through the driver's sys.path), and it stays light so they start fast."""

import json
import os
import time
from pathlib import Path

import pandas as pd

from triptych.core.errors import InputError

SHARDS = [{"id": f"part-{i:02d}", "start": 10 * i, "size": 3 + i % 4} for i in range(10)]


class PolyWorker:
    """A stand-in for a model-holding worker: built once per process (recorded in ``log``), and
    one marker file per (shard, call), so tests can count how often each shard was computed.
    Shards named in ``block`` never finish (until the process is killed)."""

    def __init__(self, log: str, scale: float = 0.5, block: tuple[str, ...] = ()) -> None:
        self.log, self.scale, self.block = Path(log), scale, set(block)
        self.log.mkdir(parents=True, exist_ok=True)
        (self.log / f"built.{os.getpid()}.{time.time_ns()}").write_text(
            json.dumps({"pid": os.getpid(), "omp": os.environ.get("OMP_NUM_THREADS")})
        )

    def __call__(self, shard: dict) -> pd.DataFrame:
        (self.log / f"call.{shard['id']}.{os.getpid()}.{time.time_ns()}").write_text(str(os.getpid()))
        while shard["id"] in self.block:
            time.sleep(0.05)
        i = pd.RangeIndex(shard["start"], shard["start"] + shard["size"])
        return pd.DataFrame(
            {
                "shard": shard["id"],
                "i": i,
                "y": self.scale * i.to_numpy() ** 2 - 1.0,
                "odd": i.to_numpy() % 2 == 1,
            }
        )


class FailsOn:
    def __init__(self, bad: str) -> None:
        self.bad = bad

    def __call__(self, shard: dict) -> pd.DataFrame:
        if shard["id"] == self.bad:
            raise InputError(f"shard {shard['id']}: unreadable input; fix the file.")
        return pd.DataFrame({"id": [shard["id"]]})


class BrokenFactory:
    def __init__(self) -> None:
        raise InputError("model.safetensors: not found; train one first.")
