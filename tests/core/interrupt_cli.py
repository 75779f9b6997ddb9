"""The real ``triptych`` entry point with two toy commands, for the Ctrl-C / SIGTERM tests.

``toy-train`` trains a tiny Lightning model through :func:`training_run_dir` (as every
``train`` command does) and prints ``epoch N saved`` after each epoch's checkpoint;
``toy-write`` fills an :func:`atomic_output_dir` staging folder, prints ``staged`` and waits.
The test sends a signal once it reads those lines. Heavy imports stay inside ``toy-train``,
as in the real CLI modules.
"""

import signal
import sys
import time
from pathlib import Path

# a process started in the background may inherit SIGINT ignored; Ctrl-C must raise KeyboardInterrupt here
signal.signal(signal.SIGINT, signal.default_int_handler)

from triptych import cli  # noqa: E402
from triptych.core.io import atomic_output_dir  # noqa: E402
from triptych.core.runs import training_run_dir  # noqa: E402


@cli.app.command("toy-train", hidden=True)
def toy_train(out: Path, epochs: int = 3, pause: float = 0.0, resume: Path | None = None) -> None:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ddp_train import IndexedData, Tiny

    from triptych.core.training import TrainerFlags, fit, make_trainer

    class Announce(L.Callback):
        """After each epoch's checkpoints: say so, then give the test time to send its signal.

        Lightning runs ModelCheckpoint's epoch-end hook after every other callback's, so epoch
        N-1 is announced at the start of epoch N, when its checkpoint is surely on disk.
        """

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch > 0:
                print(f"epoch {trainer.current_epoch - 1} saved", flush=True)
                time.sleep(pause)

    torch.set_num_threads(1)
    with training_run_dir(out, resume) as run:
        trainer = make_trainer(
            TrainerFlags(accelerator="cpu", devices="1"),
            max_epochs=epochs,
            default_root_dir=run,
            monitor=None,
            enable_progress_bar=False,
            callbacks=[Announce()],
        )
        fit(trainer, Tiny(), DataLoader(IndexedData(), batch_size=16), resume=resume)
        (run / "done.txt").write_text(f"{epochs} epochs\n")
    print("finished", flush=True)


@cli.app.command("toy-write", hidden=True)
def toy_write(out: Path, pause: float = 60.0) -> None:
    with atomic_output_dir(out) as stage:
        (stage / "new.txt").write_text("new run\n")
        print("staged", flush=True)
        time.sleep(pause)
    print("finished", flush=True)


if __name__ == "__main__":
    cli.main()
