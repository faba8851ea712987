"""Every test runs with the Khronos validation layer on, and fails if the layer says anything."""
import os

os.environ.setdefault("EYECARE_VALIDATE", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def no_validation_messages():
    import eyecare._core as core

    before = core.validation_messages()
    yield
    after = core.validation_messages()
    assert after == before, f"{after - before} Vulkan validation message(s) during the test (printed on stderr)"
