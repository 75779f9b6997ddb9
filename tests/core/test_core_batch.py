"""The Ray batch layer: a 2-process local cluster gives exactly the single-process table, a run
killed half way resumes without redoing finished shards, and bad arguments fail in one line."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
from batch_workers import SHARDS, BrokenFactory, FailsOn, PolyWorker

from triptych.core import batch
from triptych.core.batch import ShardResult, run_sharded, run_shards
from triptych.core.errors import InputError


def _calls(log: Path) -> dict[str, list[int]]:
    """Shard id -> pids of every call made on it."""
    calls: dict[str, list[int]] = {}
    for path in log.glob("call.*"):
        shard_id, pid, _ = path.name.removeprefix("call.").rsplit(".", 2)
        calls.setdefault(shard_id, []).append(int(pid))
    return calls


def _builds(log: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in log.glob("built.*")]


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray session with 2 worker CPUs for the whole file (starting Ray costs seconds)."""
    batch.init_ray(workers=2)
    import ray  # after init_ray, which sets Ray's environment (loopback only) before the import

    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_two_ray_workers_return_exactly_the_single_process_table(tmp_path, ray_cluster):
    factory = partial(PolyWorker, str(tmp_path / "log_ray"))
    got = run_sharded(factory, SHARDS, tmp_path / "ray", workers=2, progress_desc="test")
    reference = run_sharded(
        partial(PolyWorker, str(tmp_path / "log_ref")), SHARDS, tmp_path / "ref", workers=0
    )
    pd.testing.assert_frame_equal(got, reference, check_exact=True)
    # ... and the reference is the worker's own output, concatenated in shard order.
    direct = PolyWorker(str(tmp_path / "log_direct"))
    expected = pd.concat([direct(s) for s in SHARDS], ignore_index=True)
    pd.testing.assert_frame_equal(reference, expected, check_exact=True)
    assert list(got["shard"].unique()) == [s["id"] for s in SHARDS]

    # Two worker processes (not this one), each built its worker once and ran with 1 thread.
    builds = _builds(tmp_path / "log_ray")
    assert len(builds) == 2 and len({b["pid"] for b in builds}) == 2
    assert os.getpid() not in {b["pid"] for b in builds}
    assert {b["omp"] for b in builds} == {"1"}
    calls = _calls(tmp_path / "log_ray")
    assert sorted(calls) == sorted(s["id"] for s in SHARDS)
    assert all(len(pids) == 1 for pids in calls.values())
    assert {pid for pids in calls.values() for pid in pids} == {b["pid"] for b in builds}

    # A rerun finds every shard done: no worker is built, nothing is recomputed.
    results = run_shards(factory, SHARDS, tmp_path / "ray", workers=2)
    assert all(isinstance(r, ShardResult) and r.reused for r in results)
    assert [r.rows for r in results] == [s["size"] for s in SHARDS]
    assert len(_builds(tmp_path / "log_ray")) == 2
    paths = run_sharded(factory, SHARDS, tmp_path / "ray", workers=2, return_paths=True)
    assert paths == [tmp_path / "ray" / "shards" / f"{s['id']}.parquet" for s in SHARDS]
    pd.testing.assert_frame_equal(batch.read_shards(paths), reference, check_exact=True)


DRIVER = textwrap.dedent("""
    import sys
    from functools import partial
    sys.path.insert(0, {test_dir!r})
    from batch_workers import SHARDS, PolyWorker
    from triptych.core.batch import run_sharded

    out, log, address = sys.argv[1:]
    # The second half of the shards never finishes: the run is killed with exactly half done.
    stuck = tuple(s["id"] for s in SHARDS[5:])
    run_sharded(partial(PolyWorker, log, block=stuck), SHARDS, out, workers=2, ray_address=address)
""")


def test_a_killed_run_resumes_without_redoing_finished_shards(tmp_path, ray_cluster):
    out, log = tmp_path / "run", tmp_path / "log"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(test_dir=str(Path(__file__).parent)))
    # The driver joins this file's cluster through its address (the --ray-address path).
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), str(log), ray_cluster],
        env={**os.environ, "TRIPTYCH_QUIET": "1"},
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while len(list((out / "shards").glob("*.parquet"))) < 5:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the first half of the shards did not finish in 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.stem for p in (out / "shards").glob("*.parquet")}
    assert finished == {s["id"] for s in SHARDS[:5]}
    before = {path.name for path in log.glob("call.*")}

    got = run_sharded(partial(PolyWorker, str(log)), SHARDS, out, workers=2)
    # The rerun called the worker once on each unfinished shard and never on a finished one.
    rerun_calls = sorted(
        name.removeprefix("call.").rsplit(".", 2)[0]
        for name in {path.name for path in log.glob("call.*")} - before
    )
    assert rerun_calls == [s["id"] for s in SHARDS[5:]]
    assert all(len(_calls(log)[s["id"]]) == 1 for s in SHARDS[:5])
    assert not list((out / "shards").glob(".*.tmp"))
    reference = run_sharded(
        partial(PolyWorker, str(tmp_path / "log_ref")), SHARDS, tmp_path / "ref", workers=0
    )
    pd.testing.assert_frame_equal(got, reference, check_exact=True)


def test_a_worker_error_reaches_the_caller_as_itself_and_keeps_finished_shards(tmp_path, ray_cluster):
    shards = [{"id": f"s{i}"} for i in range(4)]
    with pytest.raises(InputError, match=r"^shard s3: unreadable input; fix the file\.$"):
        run_sharded(partial(FailsOn, "s3"), shards, tmp_path, workers=1)
    with pytest.raises(InputError, match=r"^shard s3: unreadable input"):
        run_sharded(partial(FailsOn, "s3"), shards, tmp_path / "local", workers=0)
    assert {p.stem for p in (tmp_path / "local" / "shards").glob("*.parquet")} == {"s0", "s1", "s2"}


@pytest.mark.parametrize(
    ("shards", "kwargs", "message"),
    [
        ([{"id": "a"}, {"id": "a"}], {}, "shard id 'a' appears twice"),
        ([{"name": "a"}], {}, "must be a dict with an 'id'"),
        (["a"], {}, "must be a dict with an 'id'"),
        ({"id": "a"}, {}, "must be a list of dicts"),
        ([{"id": "../escape"}], {}, "letters, digits"),
        ([{"id": 3}], {}, "letters, digits"),
        ([{"id": "a", "path": Path("x")}], {}, "not JSON-able"),
        ([{"id": "a", "x": float("nan")}], {}, "not JSON-able"),
        ([{"id": "a"}], {"workers": -1}, "--workers -1"),
        ([{"id": "a"}], {"threads_per_worker": 0}, "threads per worker 0"),
    ],
)
def test_bad_arguments_fail_in_one_line(tmp_path, shards, kwargs, message):
    with pytest.raises(InputError, match=message) as err:
        run_sharded(partial(PolyWorker, str(tmp_path / "log")), shards, tmp_path, **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "log").exists()  # nothing ran


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1", "no-port-here"])
def test_an_unreachable_ray_address_names_the_option_and_the_fix(address):
    with pytest.raises(InputError, match="--ray-address") as err:
        batch.init_ray(ray_address=address)
    assert "ray start --head" in str(err.value) and "\n" not in str(err.value)


def test_workers_are_capped_to_what_the_cluster_holds(tmp_path, ray_cluster, capsys):
    # An actor Ray cannot place would wait for ever: ask for 5 on 2 CPUs, get 2 and a note.
    with batch.ray_session(workers=5) as n:
        assert n == 2
    assert "5 workers asked, the Ray cluster holds 2" in capsys.readouterr().err
    with batch.ray_session() as n:
        assert n == 2
    for kwargs in ({"threads_per_worker": 3}, {"gpus_per_worker": 1000.0}):
        with pytest.raises(InputError, match="too few for one worker"):
            run_sharded(partial(PolyWorker, str(tmp_path / "log")), SHARDS, tmp_path, workers=1, **kwargs)
    assert not (tmp_path / "log").exists()


def test_an_output_folder_of_other_shards_is_refused(tmp_path):
    run_sharded(partial(PolyWorker, str(tmp_path / "log")), SHARDS[:2], tmp_path, workers=0)
    changed = [SHARDS[0], {**SHARDS[1], "size": 99}]
    with pytest.raises(InputError, match="different shard.*new output folder"):
        run_sharded(partial(PolyWorker, str(tmp_path / "log")), changed, tmp_path, workers=0)


def test_a_worker_that_cannot_start_reaches_the_caller_as_itself(tmp_path, ray_cluster):
    with pytest.raises(InputError, match=r"^model.safetensors: not found; train one first\.$"):
        run_sharded(BrokenFactory, [{"id": "a"}, {"id": "b"}], tmp_path, workers=1)


def test_importing_the_option_types_does_not_import_ray():
    code = "import sys, triptych.core.batch, triptych.core.batch_options; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
