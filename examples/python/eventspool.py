"""eventspool from Python, through ctypes and the C API: no compiled extension.

Build the library once (from the crate's root), then import this module:

    cargo rustc --release --lib --features capi --crate-type cdylib,staticlib

    from eventspool import Spool, Sink
    with Spool("events.db", {"max_bytes": 64 << 20}) as spool:
        spool.emit("order.created", {"id": 42}, subject="order/42")
        seq = spool.append("order.paid", {"id": 42})
        for event in spool.subscribe("billing", timeout=0.1):
            ...

The library is found through $EVENTSPOOL_LIB, else in the crate's target/release and
target/debug folders. Failures raise `eventspool.Error` with the library's message.
"""

import ctypes
import json
import os
import sys

__all__ = ["Spool", "Sink", "Subscription", "Error", "Retry", "Refused", "load"]

_POSITIONS = {"beginning": 0, "last_acknowledged": 1, "latest": 2, "after": 3}
_TIMED_OUT = 7
_FOREVER = 2**64 - 1

_DELIVER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_char), ctypes.c_size_t)
_ON_ERROR = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p)


class Error(Exception):
    """A call failed: `status` is the C status code, `name` its name, the message the library's."""

    def __init__(self, status, name, message):
        super().__init__(message)
        self.status = status
        self.name = name


class Retry(Exception):
    """Raise from a sink's deliver to have the batch retried (after `after` seconds, or the backoff)."""

    def __init__(self, message="retry", after=None):
        super().__init__(message)
        self.after = after


class Refused(Exception):
    """Raise from a sink's deliver when no retry will help: the batch goes to the dead letters."""


def _library_path():
    given = os.environ.get("EVENTSPOOL_LIB")
    if given:
        return given
    name = {"darwin": "libeventspool.dylib", "win32": "eventspool.dll"}.get(sys.platform, "libeventspool.so")
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    for profile in ("release", "debug"):
        candidate = os.path.join(root, "target", profile, name)
        if os.path.exists(candidate):
            return candidate
    raise OSError(
        "libeventspool not found: build it with `cargo rustc --release --lib --features capi "
        "--crate-type cdylib,staticlib` or set EVENTSPOOL_LIB"
    )


_lib = None


def load(path=None):
    """Loads the C library (once) and declares its functions."""
    global _lib
    if _lib is not None and path is None:
        return _lib
    lib = ctypes.CDLL(path or _library_path())
    p, c, u64, size, status = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_int
    out = ctypes.POINTER(ctypes.c_void_p)
    text_out = ctypes.POINTER(ctypes.c_void_p)
    u64_out = ctypes.POINTER(ctypes.c_uint64)
    size_out = ctypes.POINTER(ctypes.c_size_t)
    signatures = {
        "eventspool_version": (c, []),
        "eventspool_last_error": (size, [p, size]),
        "eventspool_status_name": (c, [ctypes.c_int]),
        "eventspool_string_free": (None, [p]),
        "eventspool_delivery_error": (None, [c]),
        "eventspool_builder_new": (status, [c, c, out]),
        "eventspool_builder_add_sink": (status, [p, c, c, _DELIVER, p]),
        "eventspool_builder_on_error": (status, [p, _ON_ERROR, p]),
        "eventspool_builder_open": (status, [p, out]),
        "eventspool_emit_event": (status, [p, c, size]),
        "eventspool_append_event": (status, [p, c, size, u64_out]),
        "eventspool_builder_free": (None, [p]),
        "eventspool_emit": (status, [p, c, c, size, c, c]),
        "eventspool_append": (status, [p, c, c, size, c, c, u64_out]),
        "eventspool_flush": (status, [p, u64]),
        "eventspool_close": (status, [p, u64]),
        "eventspool_free": (None, [p]),
        "eventspool_len": (status, [p, u64_out]),
        "eventspool_last_seq": (status, [p, u64_out]),
        "eventspool_query": (status, [p, c, text_out, size_out]),
        "eventspool_seek": (status, [p, c, ctypes.c_int, u64, u64_out]),
        "eventspool_ack": (status, [p, c, u64]),
        "eventspool_consumers": (status, [p, text_out, size_out]),
        "eventspool_dead_letters": (status, [p, c, size, text_out, size_out]),
        "eventspool_requeue_dead_letters": (status, [p, c, u64_out]),
        "eventspool_purge_dead_letters": (status, [p, c, u64_out]),
        "eventspool_metrics_json": (status, [p, text_out, size_out]),
        "eventspool_metrics_prometheus": (status, [p, text_out, size_out]),
        "eventspool_subscribe": (status, [p, c, ctypes.c_int, u64, out]),
        "eventspool_subscription_next": (status, [p, u64, u64_out, text_out, size_out]),
        "eventspool_subscription_ack": (status, [p, u64]),
        "eventspool_subscription_free": (None, [p]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    _lib = lib
    return lib


def _failure(lib, status):
    length = lib.eventspool_last_error(None, 0)
    buffer = ctypes.create_string_buffer(length + 1)
    lib.eventspool_last_error(buffer, length + 1)
    name = lib.eventspool_status_name(status).decode()
    return Error(status, name, buffer.value.decode("utf-8", "replace"))


def _check(lib, status):
    if status != 0:
        raise _failure(lib, status)


def _text(text):
    return None if text is None else text.encode("utf-8")


def _taken(lib, pointer, length):
    """The library's string as Python text; the library's copy is freed."""
    try:
        return ctypes.string_at(pointer, length.value).decode("utf-8")
    finally:
        lib.eventspool_string_free(pointer)


def _millis(seconds):
    return _FOREVER if seconds is None else max(0, int(seconds * 1000))


class Sink:
    """A destination written in Python: `deliver(events)` gets a list of event dicts, in seq
    order, on the sink's own thread. Returning delivers them; raising `Retry` or any other
    exception retries with backoff; raising `Refused` dead-letters them. `options` are the
    C sink options: batch, commit_every, max_retries, backoff_min_ms, backoff_max_ms,
    event_types, order, concurrency, window."""

    def __init__(self, name, deliver, **options):
        self.name = name
        self.deliver = deliver
        self.options = options

    def _callback(self, lib):
        def trampoline(_user_data, events_json, length):
            try:
                self.deliver(json.loads(ctypes.string_at(events_json, length)))
                return 0
            except Refused as refused:
                lib.eventspool_delivery_error(str(refused).encode("utf-8", "replace"))
                return -2
            except Retry as retry:
                lib.eventspool_delivery_error(str(retry).encode("utf-8", "replace"))
                return max(1, int(retry.after * 1000)) if retry.after else -1
            except BaseException as error:  # anything else: retried, and said why
                lib.eventspool_delivery_error(f"{type(error).__name__}: {error}".encode("utf-8", "replace"))
                return -1

        return _DELIVER(trampoline)


class Spool:
    """An open spool. `config` is the SpoolConfig as a dict or JSON text (webhook sinks
    included); `sinks` are `Sink`s written in Python; `on_error(error)` hears of what
    fails where no call returns it (a dead letter, a failed commit), on the spool's
    threads. Use it as a context manager, or call `close()`. Its methods may be called
    from several threads."""

    def __init__(self, path, config=None, sinks=(), on_error=None, library=None):
        self._lib = load(library)
        self._callbacks = []  # kept alive while the spool may call them
        if isinstance(config, dict):
            config = json.dumps(config)
        builder = ctypes.c_void_p()
        _check(self._lib, self._lib.eventspool_builder_new(_text(str(path)), _text(config), ctypes.byref(builder)))
        try:
            for sink in sinks:
                callback = sink._callback(self._lib)
                self._callbacks.append(callback)
                options = json.dumps(sink.options) if sink.options else None
                _check(self._lib, self._lib.eventspool_builder_add_sink(builder, _text(sink.name), _text(options), callback, None))
            if on_error is not None:
                lib = self._lib

                def hook(_user_data, status, message):
                    try:
                        name = lib.eventspool_status_name(status).decode()
                        on_error(Error(status, name, message.decode("utf-8", "replace")))
                    except BaseException:  # nothing may unwind into the library
                        pass

                callback = _ON_ERROR(hook)
                self._callbacks.append(callback)
                _check(self._lib, self._lib.eventspool_builder_on_error(builder, callback, None))
            handle = ctypes.c_void_p()
            _check(self._lib, self._lib.eventspool_builder_open(builder, ctypes.byref(handle)))
        finally:
            self._lib.eventspool_builder_free(builder)
        self._handle = handle

    def _spool(self):
        if self._handle is None:
            raise Error(6, "EVENTSPOOL_CLOSED", "spool closed: this handle was closed")
        return self._handle

    def _event_args(self, event_type, data, subject, source):
        encoded = json.dumps(data, separators=(",", ":")).encode()
        return (_text(event_type), encoded, len(encoded), _text(subject), _text(source))

    @staticmethod
    def _whole_event(event_type, data, subject, source, id, timestamp_ms):
        event = {"type": event_type, "data": data, "subject": subject, "source": source, "id": id, "timestamp_ms": timestamp_ms}
        encoded = json.dumps({k: v for k, v in event.items() if v is not None or k == "data"}).encode()
        return encoded, len(encoded)

    def emit(self, event_type, data=None, subject=None, source=None, id=None, timestamp_ms=None):
        """Hands an event over without waiting for its commit (the overflow policy applies).
        `id` and `timestamp_ms` default to the spool's."""
        if id is None and timestamp_ms is None:
            args = self._event_args(event_type, data, subject, source)
            _check(self._lib, self._lib.eventspool_emit(self._spool(), *args))
        else:
            args = self._whole_event(event_type, data, subject, source, id, timestamp_ms)
            _check(self._lib, self._lib.eventspool_emit_event(self._spool(), *args))

    def append(self, event_type, data=None, subject=None, source=None, id=None, timestamp_ms=None):
        """Hands an event over and returns its seq once it is committed."""
        seq = ctypes.c_uint64()
        if id is None and timestamp_ms is None:
            args = self._event_args(event_type, data, subject, source)
            _check(self._lib, self._lib.eventspool_append(self._spool(), *args, ctypes.byref(seq)))
        else:
            args = self._whole_event(event_type, data, subject, source, id, timestamp_ms)
            _check(self._lib, self._lib.eventspool_append_event(self._spool(), *args, ctypes.byref(seq)))
        return seq.value

    def flush(self, timeout=None):
        """Waits until everything emitted so far is committed (at most `timeout` seconds)."""
        _check(self._lib, self._lib.eventspool_flush(self._spool(), _millis(timeout)))

    def __len__(self):
        n = ctypes.c_uint64()
        _check(self._lib, self._lib.eventspool_len(self._spool(), ctypes.byref(n)))
        return n.value

    def last_seq(self):
        n = ctypes.c_uint64()
        _check(self._lib, self._lib.eventspool_last_seq(self._spool(), ctypes.byref(n)))
        return n.value

    def _json_call(self, function, *args):
        pointer, length = ctypes.c_void_p(), ctypes.c_size_t()
        _check(self._lib, function(self._spool(), *args, ctypes.byref(pointer), ctypes.byref(length)))
        return _taken(self._lib, pointer, length)

    def query(self, **query):
        """Events matching since_ms, until_ms, event_types, subject, source, after_seq, limit."""
        return json.loads(self._json_call(self._lib.eventspool_query, _text(json.dumps(query))))

    def subscribe(self, name, position="last_acknowledged", after_seq=0, timeout=None):
        """A consumer group's reader; iterating it ends after `timeout` seconds without an event."""
        handle = ctypes.c_void_p()
        code = _POSITIONS[position]
        _check(self._lib, self._lib.eventspool_subscribe(self._spool(), _text(name), code, after_seq, ctypes.byref(handle)))
        return Subscription(self._lib, handle, timeout)

    def seek(self, name, position, after_seq=0):
        seq = ctypes.c_uint64()
        code = _POSITIONS[position]
        _check(self._lib, self._lib.eventspool_seek(self._spool(), _text(name), code, after_seq, ctypes.byref(seq)))
        return seq.value

    def ack(self, name, seq):
        _check(self._lib, self._lib.eventspool_ack(self._spool(), _text(name), seq))

    def consumers(self):
        return json.loads(self._json_call(self._lib.eventspool_consumers))

    def dead_letters(self, sink, limit=100):
        return json.loads(self._json_call(self._lib.eventspool_dead_letters, _text(sink), limit))

    def requeue_dead_letters(self, sink):
        n = ctypes.c_uint64()
        _check(self._lib, self._lib.eventspool_requeue_dead_letters(self._spool(), _text(sink), ctypes.byref(n)))
        return n.value

    def metrics(self):
        return json.loads(self._json_call(self._lib.eventspool_metrics_json))

    def prometheus(self):
        return self._json_call(self._lib.eventspool_metrics_prometheus)

    def close(self, timeout=5.0):
        """Commits what was emitted, lets the sinks deliver what they can within `timeout`,
        stops every thread and frees the handle. Idempotent."""
        if self._handle is None:
            return
        try:
            _check(self._lib, self._lib.eventspool_close(self._handle, _millis(timeout)))
        finally:
            self._lib.eventspool_free(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        if getattr(self, "_handle", None) is not None:
            self.close()


class Subscription:
    """Reads a consumer group: `next(timeout)`, `ack(seq)`, or iterate over the events."""

    def __init__(self, lib, handle, timeout):
        self._lib, self._handle, self._timeout = lib, handle, timeout

    def next(self, timeout=None):
        """The next event as a dict, or None when none came within `timeout` seconds."""
        if self._handle is None:
            raise Error(6, "EVENTSPOOL_CLOSED", "subscription closed")
        pointer, length, seq = ctypes.c_void_p(), ctypes.c_size_t(), ctypes.c_uint64()
        status = self._lib.eventspool_subscription_next(
            self._handle, _millis(timeout), ctypes.byref(seq), ctypes.byref(pointer), ctypes.byref(length)
        )
        if status == _TIMED_OUT:
            return None
        _check(self._lib, status)
        return json.loads(_taken(self._lib, pointer, length))

    def ack(self, seq):
        """Acknowledges every event up to `seq`, durably."""
        _check(self._lib, self._lib.eventspool_subscription_ack(self._handle, seq))

    def __iter__(self):
        while True:
            event = self.next(self._timeout)
            if event is None:
                return
            yield event

    def close(self):
        if self._handle is not None:
            self._lib.eventspool_subscription_free(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        self.close()
