"""A worker that dies by SIGKILL after its first batch is in Redis and before the offset commit."""

import os
import signal
import sys

from service import worker


async def _die_instead_of_commit(self: worker.Worker, msg: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


worker.Worker.commit = _die_instead_of_commit  # type: ignore[method-assign]
sys.exit(worker.main())
