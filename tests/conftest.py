"""Shared test set-up: offline always, one thread per xdist worker, toy models loaded once, and
the fixtures several modules use (tiny pipelines, ``one_thread``); the builders they share (the
mini suite, submissions, checkpoints, a small repository) are in ``tests/fixtures``."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Two xdist workers on two cores: one thread each (oversubscribed threads are far slower).
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))

# pytester's in-process runs drop the modules an inner run imported; torch's inductor registers
# an operator library at import (``_inductor_test``) and fails when imported a second time, so it
# is imported once here, before any inner run, and stays.
import torch._inductor.test_operators  # noqa: E402,F401

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def toy_pipe():
    from harness.toy.model import load_pipeline

    return load_pipeline()


@pytest.fixture(scope="session")
def toy_clf():
    from harness.toy.classifier import load_classifier

    return load_classifier()


@pytest.fixture(scope="session")
def tiny_pipe_factory():
    """A tiny random StableDiffusionPipeline built in code (diffusers-tests style)."""
    from harness.toy.model import build_pipeline

    return build_pipeline


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny pipeline folder (UNet ``fixtures.TINY_UNET``, seed 3) for pytester repositories."""
    from fixtures import TINY_UNET

    from harness.toy.model import build_pipeline

    d = tmp_path_factory.mktemp("base") / "base"
    build_pipeline(seed=3, unet=TINY_UNET).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_pipe_factory):
    """A tiny random pipeline (``tiny_pipe_factory``, seed 7) saved as a diffusers folder."""
    d = tmp_path_factory.mktemp("tiny") / "pipe"
    tiny_pipe_factory(seed=7).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module (the machine is shared; as in a Ray task given 1 CPU).
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
