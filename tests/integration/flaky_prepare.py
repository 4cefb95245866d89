"""A worker whose first two batch preparations fail: a bug in the worker, not bad input."""

import sys
from collections.abc import Sequence

from service import store, worker

_apply_call = store.Store.apply_call
failures = 2


def _flaky(self: store.Store, sid: str, cmds: Sequence[store.Command]) -> tuple[list[str], list[str]]:
    global failures
    if failures > 0:
        failures -= 1
        raise RuntimeError("simulated bug in the batch path")
    return _apply_call(self, sid, cmds)


store.Store.apply_call = _flaky  # type: ignore[method-assign]
sys.exit(worker.main())
