"""Read ahead: decode the next batches on a thread while the current one is computed.

pyarrow and NumPy release the GIL while they decode and convert, so reading
and the loss overlap.  The producer stops when the consumer stops (a gate
error, an input error, Ctrl-C), and exceptions of the producer reach the
consumer at the batch where they happened.
"""

from __future__ import annotations

import queue
import threading

_DONE = object()


def read_ahead(iterable, depth: int = 2):
    """Yield the items of ``iterable``, produced up to ``depth`` items ahead on a thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        it = iter(iterable)
        try:
            for item in it:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put((_DONE, exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="bce-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is _DONE:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        thread.join()
