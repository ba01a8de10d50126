"""`ilt-audit` with a fault planted in training, for the tests of faults (never imported by the
package): run as a script, under torchrun or alone, with the CLI's arguments.

``ILT_AUDIT_TEST_FAULT`` says which fault:

- ``sigkill:RANK:EPOCH:STEP``: rank RANK kills itself with SIGKILL before batch STEP of epoch
  EPOCH, in the first attempt only (``TORCHELASTIC_RESTART_COUNT`` 0 or unset);
- ``slow:SECONDS``: every training batch takes SECONDS longer, so that a test can signal a run
  mid-epoch.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import ilt_audit.training.loop as loop
from ilt_audit.cli import main


def _plant(fault: str) -> None:
    kind, *args = fault.split(":")
    original = loop._train_epoch

    def train_epoch(run, epoch, epochs, stop):
        forward, steps = run.forward, 0

        def faulty(x, module=None):
            nonlocal steps
            steps += 1
            if kind == "slow":
                time.sleep(float(args[0]))
            elif (
                kind == "sigkill"
                and (run.place.rank, epoch, steps) == tuple(map(int, args))
                and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
            ):
                os.kill(os.getpid(), signal.SIGKILL)
            return forward(x, module)

        run.forward = faulty
        try:
            return original(run, epoch, epochs, stop)
        finally:
            del run.forward

    loop._train_epoch = train_epoch


if __name__ == "__main__":
    _plant(os.environ["ILT_AUDIT_TEST_FAULT"])
    sys.argv[0] = "ilt-audit"
    main()
