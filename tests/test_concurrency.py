"""One model used from several threads: calls take turns and give the answers they give alone, each
thread sees its own timings; the GIL is released while the device works; a KeyboardInterrupt stops a
generation cleanly. Every interleaving here is forced (tests/gil.py), none depends on timing."""
import queue
import signal
import threading

import numpy as np
import pytest

from eyecare.model import EyecareGPT
from eyecare.tiny import make_tiny
from gil import no_forced_switches, ran_during
from reference import IMAGES


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    m = EyecareGPT.from_pretrained(make_tiny(tmp_path_factory.mktemp("conc"), "qwen2"), progress=False)
    yield m
    m.close()


class AnnouncingLock:
    """Stands in for the language model's lock: says who is about to wait for it."""

    def __init__(self, real):
        self.real, self.waiting = real, queue.SimpleQueue()

    def acquire(self):
        self.waiting.put(threading.current_thread().name)
        return self.real.acquire()

    def release(self):
        self.real.release()


def test_threads_that_wait_for_an_open_generation_get_the_answers_they_get_alone(model, monkeypatch):
    asks = {"main": ("Describe at length.", IMAGES[:1]), "b": ("Compare them.", IMAGES), "c": ("Any glaucoma?", [])}
    alone = {}
    for name, (q, images) in asks.items():
        alone[name] = (model.chat(q, images=images, max_new_tokens=12), dict(model.timings), model.last_output.token_ids)
    lock = AnnouncingLock(model.language._lock._lock)
    monkeypatch.setattr(model.language._lock, "_lock", lock)
    results = {}

    def worker():
        name = threading.current_thread().name
        q, images = asks[name]
        try:
            text = model.chat(q, images=images, max_new_tokens=12)
        except BaseException as e:  # say so, rather than leave the main thread waiting for this one
            lock.waiting.put(f"{name} failed: {e!r}")
            raise
        results[name] = (text, dict(model.timings), model.last_output.token_ids)

    stream = model.chat(*asks["main"][:1], images=asks["main"][1], max_new_tokens=12, stream=True)
    pieces = [next(stream)]  # this thread now holds the model for the rest of its generation
    threads = [threading.Thread(target=worker, name=n) for n in ("b", "c")]
    for t in threads:
        t.start()
    # Both have run their vision pass and wait for the model while this generation is half done.
    waiting = set()
    while waiting != {"b", "c"}:
        waiting.add(lock.waiting.get())
        waiting.discard("MainThread")
        assert not [w for w in waiting if "failed" in w], waiting
    pieces += list(stream)
    mine = (dict(model.timings), model.last_output.token_ids)
    for t in threads:
        t.join()
    assert "".join(pieces) == alone["main"][0]
    results["main"] = ("".join(pieces), *mine)
    for name, (text, timings, ids) in results.items():
        want_text, want_timings, want_ids = alone[name]
        assert text == want_text and ids == want_ids, name
        # Each thread's figures are its own call's, though the others finished after it or before it.
        assert timings["tokens"] == len(want_ids) and timings["prompt_tokens"] == want_timings["prompt_tokens"], name
        assert (timings["vision_ms"] > 0) == bool(asks[name][1]), name


def test_the_gil_is_released_during_device_work(model):
    lm = model.language
    ids = np.asarray([lm.encode("Describe the findings in both images, one after the other.")], dtype=np.int32)
    assert ran_during(lambda: lm._decoder.forward(ids, None, 0, "last")), "the decoder held the GIL"
    pixels = model.processor(IMAGES[:1])["pixel_values"]
    assert ran_during(lambda: model.vision._tower.run(pixels, bytes(pixels.shape[0]), False)), \
        "the vision tower held the GIL"


class InterruptingDecoder:
    """The model's decoder, raising a real SIGINT (what Ctrl-C sends) inside the next forward pass once armed."""

    def __init__(self, real):
        self.real, self.armed, self.fired = real, False, False

    def forward(self, *args):
        if self.armed:
            self.armed, self.fired = False, True
            signal.raise_signal(signal.SIGINT)
        return self.real.forward(*args)

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "chat"])
def test_keyboard_interrupt_stops_generation_and_the_model_stays_usable(model, monkeypatch, request, stream):
    # Ctrl-C as an interactive Python sees it: a test runner started in the background (`make test &` in a script,
    # nohup) inherits SIGINT ignored, and Python then installs no handler, so the test installs Python's own.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    before = model.chat("Describe.", images=IMAGES[:1], max_new_tokens=8)
    whole = model.chat("Describe at length.", images=IMAGES, max_new_tokens=40)
    assert len(model.last_output.token_ids) == 40, "the interrupted generation must have steps left"
    hook = InterruptingDecoder(model.language._decoder)
    monkeypatch.setattr(model.language, "_decoder", hook)
    pieces = []
    with pytest.raises(KeyboardInterrupt):
        if stream:
            answer = model.chat("Describe at length.", images=IMAGES, max_new_tokens=40, stream=True)
            pieces.append(next(answer))
            hook.armed = True  # interrupt the decode step after the first piece
            for piece in answer:
                pieces.append(piece)
        else:
            hook.armed = True  # interrupt the prefill
            model.chat("Describe at length.", images=IMAGES, max_new_tokens=40)
    assert hook.fired
    assert whole.startswith("".join(pieces)) and len("".join(pieces)) < len(whole)
    monkeypatch.undo()
    # The lock was released, the cache is rebuilt by the next call: the same answers as before.
    assert model.chat("Describe.", images=IMAGES[:1], max_new_tokens=8) == before
    assert model.chat("Describe at length.", images=IMAGES, max_new_tokens=40) == whole


def test_a_new_chat_while_this_thread_streams_is_refused(model):
    whole = model.chat("Describe.", max_new_tokens=30)
    other = model.chat("Another?", max_new_tokens=2)
    stream = model.chat("Describe.", max_new_tokens=30, stream=True)
    first = next(stream)
    with pytest.raises(RuntimeError, match="already generating"):
        model.chat("Another?", max_new_tokens=2)
    assert first + "".join(stream) == whole
    assert model.chat("Another?", max_new_tokens=2) == other


def test_freeing_a_tensor_while_another_thread_uses_it_raises_instead_of_crashing():
    import eyecare._core as core
    from eyecare.core import empty, tensor

    x = tensor(np.ones((64, 256), np.float32))
    w = tensor(np.ones((256, 256), np.float32))
    y = empty((64, 256))
    state = {"in_op": False, "freed_during_op": None, "calls": 0}
    errors = []
    started = queue.SimpleQueue()

    def use():
        try:
            for _ in range(100_000):
                state["in_op"] = True
                core.op_matmul(x, w, None, y)
                state["in_op"] = False
                state["calls"] += 1
                if state["calls"] == 1:
                    started.put(True)
        except ValueError as e:
            errors.append(str(e))

    with no_forced_switches():
        t = threading.Thread(target=use)
        t.start()
        started.get()
        # The worker's loop gives the GIL up only inside op_matmul: this free() lands while an op is in flight.
        state["freed_during_op"] = state["in_op"]
        w.free()
        t.join()
    assert state["freed_during_op"] is True
    assert len(errors) == 1 and "freed" in errors[0], errors
    assert np.allclose(y.numpy(), 256.0)  # the ops before the free computed the right thing
    x.free()
    y.free()
