"""A worker whose first two batch submissions fail while decoding: a bug in the worker, not bad input."""

import sys
from collections.abc import Sequence

from aiokafka import ConsumerRecord

from service import worker

_decode = worker.Worker.decode
failures = 2


def _flaky(
    self: worker.Worker, records: Sequence[ConsumerRecord], batch: worker.Batch | None = None
) -> worker.Batch:
    global failures
    if failures > 0:
        failures -= 1
        raise RuntimeError("simulated bug in the batch path")
    return _decode(self, records, batch)


worker.Worker.decode = _flaky  # type: ignore[method-assign]
sys.exit(worker.main())
