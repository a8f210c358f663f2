"""The spool from Python: a Python sink, emit, append, a consumer group, close.

    cargo rustc --release --lib --features capi --crate-type cdylib,staticlib
    python3 examples/python/example.py [SPOOL_PATH]
"""

import os
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eventspool import Refused, Sink, Spool  # noqa: E402

received = []
done = threading.Event()


def to_ledger(events):
    """Delivered in seq order, on the sink's thread; raising retries (or, Refused, dead-letters)."""
    for event in events:
        if event["type"] == "order.fraud":
            raise Refused("the ledger refuses fraud")
    received.extend(events)
    if len(received) >= 11:
        done.set()


path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.mkdtemp(), "events.db")
# One event per call: a refusal dead-letters the whole batch it came in.
sinks = [Sink("ledger", to_ledger, batch=1, max_retries=3, backoff_min_ms=10)]
with Spool(path, {"max_bytes": 64 << 20}, sinks=sinks) as spool:
    spool.seek("billing", "last_acknowledged")  # registered first, so the events wait for it
    for i in range(10):
        spool.emit("order.created", {"id": i}, subject=f"order/{i}")
    seq = spool.append("order.paid", {"id": 42, "total": "9.99"}, subject="order/42")
    print(f"order.paid committed as seq {seq}")
    spool.append("order.fraud", {"id": 666})

    billing = spool.subscribe("billing", timeout=0.1)
    read = 0
    for event in billing:  # ends once nothing came for 0.1 s
        read += 1
        billing.ack(event["seq"])
    billing.close()
    print(f"billing read {read} events")

    done.wait(10)
    print(f"ledger received {len(received)} events, seqs {received[0]['seq']}..{received[-1]['seq']}")
    print(f"dead letters of ledger: {[d['last_error'] for d in spool.dead_letters('ledger')]}")
print("closed")
