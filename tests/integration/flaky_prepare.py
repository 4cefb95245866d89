"""A worker whose first two batch preparations fail: a bug in the worker, not bad input."""

import sys
from collections.abc import Mapping, Sequence

from service import store, worker

_prepare = store.Store.prepare
failures = 2


def _flaky(self: store.Store, batch: Mapping[str, Sequence[store.Command]]) -> store.Prepared:
    global failures
    if failures > 0:
        failures -= 1
        raise RuntimeError("simulated bug in the batch path")
    return _prepare(self, batch)


store.Store.prepare = _flaky  # type: ignore[method-assign]
sys.exit(worker.main())
