"""A rank that dies mid-training, for the failure tests: import with ``--import plugins_for_tests.dying_rank``.

On import it makes `TrainingSession.end_step` end the process abruptly (``os._exit``, as a killed
or crashed worker) on rank ``RAE_TEST_DIE_RANK`` when step ``RAE_TEST_DIE_AT`` ends.
"""
from __future__ import annotations

import os

from rae.train.session import TrainingSession

_end_step = TrainingSession.end_step


def _end_step_or_die(self: TrainingSession, *args, **kwargs) -> None:
    _end_step(self, *args, **kwargs)
    if (self.ctx.accelerator.rank == int(os.environ.get("RAE_TEST_DIE_RANK", "-1"))
            and self.step == int(os.environ.get("RAE_TEST_DIE_AT", "-1"))):
        os._exit(17)


TrainingSession.end_step = _end_step_or_die
