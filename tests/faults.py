"""Test-only fault injection into a training run (not part of chsnn).

``RANK:STEP:MODE``: on rank RANK, right after optimizer step STEP, ``kill``
(SIGKILL itself), ``exit`` (exit code 3), ``hang``, ``sigint`` (Ctrl-C) or
``nan`` (every weight becomes NaN, as a diverging step would leave them).

In the test's process, :func:`inject` wraps :meth:`chsnn.trainer.Runner.train_step`
(with pytest's ``monkeypatch``, so it is undone after the test). For another
process, run this file in place of ``python -m chsnn`` with
``CHSNN_TEST_FAULT=RANK:STEP:MODE`` in its environment::

    python tests/faults.py train ...      # or under torchrun
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

FAULT_ENV = "CHSNN_TEST_FAULT"
MODES = ("kill", "exit", "hang", "sigint", "nan")


def parse(spec: str) -> tuple[int, int, str]:
    try:
        rank, step, mode = spec.split(":")
        return int(rank), int(step), mode
    except ValueError:
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected RANK:STEP:MODE, e.g. 1:2:kill") from None


def fault_point(step: int, model=None, spec: str | None = None) -> None:
    """Act out ``spec`` (default: ``$CHSNN_TEST_FAULT``) if this is its rank and step."""
    import torch

    from chsnn import distributed

    spec = os.environ.get(FAULT_ENV) if spec is None else spec
    if not spec:
        return
    rank, at_step, mode = parse(spec)
    if rank != distributed.rank() or at_step != step:
        return
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "exit":
        os._exit(3)
    elif mode == "hang":
        time.sleep(3600)
    elif mode == "nan" and model is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    elif mode == "sigint":  # as Ctrl-C would
        # A process started in the background by a non-interactive shell (nohup ... &)
        # inherits SIGINT ignored; Ctrl-C in a terminal reaches Python's default handler.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the signal arrives at the next bytecode; never get past here without it
    else:
        raise ValueError(f"{FAULT_ENV}={spec!r}: MODE must be {', '.join(MODES[:-1])} or {MODES[-1]}")


def inject(monkeypatch=None, spec: str | None = None) -> None:
    """Make every training step end at :func:`fault_point` (``spec`` None:
    read ``$CHSNN_TEST_FAULT`` at each step)."""
    from chsnn.trainer import Runner

    train_step = Runner.train_step

    def train_step_then_fault(self, x, y, b, progress):
        train_step(self, x, y, b, progress)
        fault_point(progress.step, self.model, spec)

    if monkeypatch is None:
        Runner.train_step = train_step_then_fault
    else:
        monkeypatch.setattr(Runner, "train_step", train_step_then_fault)


SCRIPT = Path(__file__).resolve()

if __name__ == "__main__":
    sys.path.insert(0, str(SCRIPT.parents[1]))  # this checkout's chsnn
    inject()
    from chsnn.cli import main

    sys.exit(main())
