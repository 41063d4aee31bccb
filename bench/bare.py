"""Bare Celery for bench/ledger.py: no Django, no result backend, Celery's defaults.

celery -A bench.bare worker      (BENCH_BROKER: the broker URL)
"""

from __future__ import annotations

import os

from celery import Celery

from bench.counting import count

app = Celery("bare", broker=os.environ["BENCH_BROKER"])
app.conf.broker_connection_retry_on_startup = True


@app.task(name="bench.counted")
def counted(n: int) -> dict[str, int]:
    count()
    return {"n": n}
