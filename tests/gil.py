"""Deterministic thread interleavings for the concurrency tests, with no sleeps or timers.

The trick: sys.setswitchinterval(huge) stops the interpreter from handing the GIL to another thread on
its own. A thread then gets the GIL only where the thread holding it gives it up: a blocking wait (a lock,
a queue) or C code that releases it. So "another Python thread ran while this C call was in progress"
can only be true if the C call released the GIL, and a thread that is in a tight Python loop around a C
call can only be interrupted inside that C call.
"""
import queue
import sys
import threading
from contextlib import contextmanager


@contextmanager
def no_forced_switches():
    """While inside, threads switch only where the GIL is given up voluntarily."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        yield
    finally:
        sys.setswitchinterval(saved)


def ran_during(call, attempts: int = 200) -> bool:
    """True once a second Python thread ran while `call()` was in progress (call() should be a bare C
    function: any Python it runs could give up the GIL too). False if that never happened in `attempts`
    calls, which with forced switches off means call() never released the GIL.

    The watcher is woken (through a C queue, whose put never gives up the GIL) just before each call;
    it can only get the GIL while the caller is inside call() or blocked after it, and it records which."""
    state = {"in_call": False, "seen": False}
    wake: queue.SimpleQueue = queue.SimpleQueue()

    def watcher():
        while wake.get():  # blocks with the GIL released; None ends it
            if state["in_call"]:
                state["seen"] = True

    with no_forced_switches():
        thread = threading.Thread(target=watcher)
        thread.start()
        try:
            for _ in range(attempts):
                state["in_call"] = True
                wake.put(True)
                call()
                state["in_call"] = False
                if state["seen"]:
                    return True
            return False
        finally:
            state["in_call"] = False
            wake.put(None)
            thread.join()
