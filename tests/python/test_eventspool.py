"""The ctypes wrapper end to end (run by tests/capi.rs with EVENTSPOOL_LIB set)."""

import os
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "python"))
import eventspool  # noqa: E402
from eventspool import Error, Refused, Retry, Sink, Spool  # noqa: E402


def wait_until(condition, what, timeout=20.0):
    """Waits on a condition with a deadline (no sleeping to synchronise)."""
    done = threading.Event()
    deadline = threading.Timer(timeout, done.set)
    deadline.start()
    try:
        while not condition():
            if done.wait(0.001):
                raise AssertionError(f"timed out waiting for: {what}")
    finally:
        deadline.cancel()


class SpoolTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "events.db")

    def tearDown(self):
        self.dir.cleanup()

    def test_emit_append_flush_query_and_reopen(self):
        with Spool(self.path, {"batch_size": 64}) as spool:
            spool.seek("keeper", "last_acknowledged")
            for i in range(100):
                spool.emit("order.created", {"id": i}, subject=f"order/{i}")
            seq = spool.append("order.paid", {"id": 7, "note": "café"}, source="shop")
            self.assertEqual(seq, 101)
            spool.flush(5)
            self.assertEqual(len(spool), 101)
            paid = spool.query(event_types=["order.paid"])
            self.assertEqual(paid[0]["seq"], 101)
            self.assertEqual(paid[0]["data"], {"id": 7, "note": "café"})
            self.assertEqual(paid[0]["source"], "shop")
            self.assertEqual(len(spool.query(after_seq=50, limit=10)), 10)
            self.assertIn("eventspool_committed_total 101", spool.prometheus())
            self.assertEqual(spool.metrics()["committed"], 101)
        # The context manager closed it: the file opens again, with seq going on.
        with Spool(self.path) as spool:
            self.assertEqual(spool.last_seq(), 101)
            self.assertEqual(spool.append("order.shipped", {"id": 7}), 102)

    def test_subscribe_iterates_acks_and_resumes_after_a_restart(self):
        with Spool(self.path) as spool:
            spool.seek("billing", "last_acknowledged")
            for i in range(10):
                spool.append("tick", {"n": i})
            with spool.subscribe("billing", timeout=0.05) as billing:
                seen = []
                for event in billing:
                    seen.append(event["data"]["n"])
                    if len(seen) == 4:
                        billing.ack(event["seq"])
                self.assertEqual(seen, list(range(10)))
        with Spool(self.path) as spool:
            with spool.subscribe("billing", timeout=0.05) as billing:
                self.assertEqual([e["data"]["n"] for e in billing], list(range(4, 10)))

    def test_a_python_sink_gets_every_event_in_order_and_refusals_are_dead_lettered(self):
        got = []
        calls = []

        def deliver(events):
            calls.append(len(events))
            if len(calls) == 1:
                raise Retry("not yet", after=0.001)
            for event in events:
                if event["type"] == "poison":
                    raise Refused("poison is refused by Python")
            got.extend(e["seq"] for e in events)

        def broken(events):
            raise ValueError("a bug in the sink")

        sinks = [
            Sink("py-sink", deliver, batch=7, max_retries=3),
            Sink("broken", broken, max_retries=0, backoff_min_ms=1, backoff_max_ms=2),
        ]
        heard = []
        with Spool(self.path, sinks=sinks, on_error=heard.append) as spool:
            for i in range(50):
                spool.emit("order.created", {"id": i})
            spool.flush(5)
            wait_until(lambda: len(got) == 50, "the Python sink received 50 events")
            self.assertEqual(got, list(range(1, 51)))
            spool.append("poison", None)
            wait_until(lambda: spool.dead_letters("py-sink"), "the poison event is dead-lettered")
            letter = spool.dead_letters("py-sink")[0]
            self.assertIn("poison is refused by Python", letter["last_error"])
            self.assertEqual(letter["event"]["type"], "poison")
            wait_until(lambda: spool.dead_letters("broken"), "the broken sink's failures are dead-lettered")
            self.assertIn("ValueError: a bug in the sink", spool.dead_letters("broken")[0]["last_error"])
            wait_until(lambda: any("poison is refused" in str(e) for e in heard), "on_error heard of the dead letter")
            self.assertTrue(all(e.name == "EVENTSPOOL_DELIVERY" for e in heard), heard)

    def test_errors_are_exceptions_with_the_library_message(self):
        with Spool(self.path) as spool:
            with self.assertRaises(Error) as caught:
                spool.emit("", {"id": 1})
            self.assertEqual(caught.exception.name, "EVENTSPOOL_INVALID_EVENT")
            self.assertIn("event type must not be empty", str(caught.exception))
            with self.assertRaises(Error) as caught:
                Spool(self.path)
            self.assertEqual(caught.exception.name, "EVENTSPOOL_LOCKED")
            self.assertIn(self.path, str(caught.exception))
            with self.assertRaises(Error) as caught:
                spool.subscribe("billing").ack(99)
            self.assertEqual(caught.exception.name, "EVENTSPOOL_CONSUMER")
        with self.assertRaises(Error) as caught:
            Spool(self.path, {"max_events": 0})
        self.assertEqual(caught.exception.name, "EVENTSPOOL_INVALID_CONFIG")
        self.assertIn("max_events must be at least 1", str(caught.exception))
        closed = Spool(self.path)
        closed.close()
        with self.assertRaises(Error) as caught:
            closed.emit("late", 1)
        self.assertEqual(caught.exception.name, "EVENTSPOOL_CLOSED")

    def test_an_event_keeps_the_callers_id_and_time(self):
        with Spool(self.path) as spool:
            seq = spool.append("order.refunded", {"id": 9}, id="refund-9", timestamp_ms=1_700_000_000_000)
            event = spool.query(event_types=["order.refunded"])[0]
            self.assertEqual((event["seq"], event["id"], event["timestamp_ms"]), (seq, "refund-9", 1_700_000_000_000))

    def test_version(self):
        self.assertRegex(eventspool.load().eventspool_version().decode(), r"^\d+\.\d+\.\d+")


if __name__ == "__main__":
    unittest.main()
