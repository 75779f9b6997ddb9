import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_two_process_ddp_training_keeps_ranks_in_sync(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "m3jepa_ddp_script.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    # 36 train images / (batch 8 × 2 ranks) = 3 batches per epoch, 2 sampled task steps each
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2 * 3 * 2
    assert ranks[0]["sum"] == pytest.approx(ranks[1]["sum"], rel=1e-6)
    assert ranks[0]["abs"] == pytest.approx(ranks[1]["abs"], rel=1e-6)
