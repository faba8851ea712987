"""One model used from several threads: calls take turns and give the answers they give alone; the
GIL is released while the device works; a KeyboardInterrupt stops a generation cleanly."""
import os
import signal
import threading
import time

import pytest

from eyecare.model import EyecareGPT
from eyecare.tiny import make_tiny
from reference import IMAGES


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    m = EyecareGPT.from_pretrained(make_tiny(tmp_path_factory.mktemp("conc"), "qwen2"), progress=False)
    yield m
    m.close()


def test_two_threads_get_the_answers_they_get_alone(model):
    asks = [("Describe.", IMAGES[:1]), ("Compare them.", IMAGES), ("Any glaucoma?", [])]
    alone = [model.chat(q, images=i, max_new_tokens=10) for q, i in asks]
    results = {}

    def worker(k):
        for j in range(2):
            q, i = asks[(k + j) % len(asks)]
            results[(k, j)] = (q, model.chat(q, images=i, max_new_tokens=10))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = dict((q, a) for (q, _), a in zip(asks, alone))
    assert len(results) == 6
    for q, answer in results.values():
        assert answer == expected[q]


def test_the_gil_is_released_during_device_work(model):
    counter = {"n": 0, "stop": False}

    def spin():
        while not counter["stop"]:
            counter["n"] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        start = counter["n"]
        model.chat("Describe.", images=IMAGES, max_new_tokens=20)
        progressed = counter["n"] - start
    finally:
        counter["stop"] = True
        t.join()
    assert progressed > 1000, "a Python thread made no progress while the model ran"


def test_keyboard_interrupt_stops_generation_and_the_model_stays_usable(model):
    before = model.chat("Describe.", images=IMAGES[:1], max_new_tokens=8)
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        for _ in range(100):  # until the interrupt lands
            model.chat("Describe at length.", images=IMAGES, max_new_tokens=200)
    timer.cancel()
    assert model.chat("Describe.", images=IMAGES[:1], max_new_tokens=8) == before


def test_a_new_chat_while_this_thread_streams_is_refused(model):
    stream = model.chat("Describe.", max_new_tokens=30, stream=True)
    next(stream)
    with pytest.raises(RuntimeError, match="already generating"):
        model.chat("Another?", max_new_tokens=2)
    rest = "".join(stream)
    assert isinstance(rest, str)
    assert model.chat("Another?", max_new_tokens=2) is not None


def test_freeing_a_tensor_while_another_thread_uses_it_raises_instead_of_crashing():
    import numpy as np

    import eyecare._core as core
    from eyecare.core import empty, tensor

    for _ in range(5):
        x = tensor(np.ones((64, 256), np.float32))
        w = tensor(np.ones((256, 256), np.float32))
        y = empty((64, 256))
        errors = []

        def use():
            try:
                for _ in range(200):
                    core.op_matmul(x, w, None, y)
            except ValueError as e:
                errors.append(str(e))

        t = threading.Thread(target=use)
        t.start()
        time.sleep(0.01)
        w.free()
        t.join()
        assert not errors or "freed" in errors[0]
