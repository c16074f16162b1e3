"""Golden cache keys: the image cache and the attack cache are addressed by these sha256 values.

A change to how a job or an attack record is keyed silently turns every cached image and attack
of every user into a miss (and every committed result into one that no warm re-run reproduces).
If a change is deliberate, bump ``GENERATION_VERSION`` / ``ATTACKS_VERSION`` and update the
values here in the same commit, saying why.
"""

from harness.attacks.common import Item, item_key
from harness.run.generate import Job

JOB = Job("A ring image in striped style.", "", 3, "ddim", 20, 5.0, 32, 32, 0.0, "float32", "abc123")


def test_png_job_key_is_pinned():
    assert JOB.key() == "c6f81964445a176ff464616d3a3da2fb07df2c257cda292d418ae47ba78ae5e2"


def test_jpeg_job_key_is_pinned_and_differs_from_png():
    j = Job(*[getattr(JOB, f) for f in ("prompt", "negative_prompt", "seed", "scheduler", "steps", "guidance",
                                         "height", "width", "eta", "dtype", "model")], "jpeg", 75)
    assert j.key() == "12a646fbbc6b67ce34673a63e958621183c91346b8e4a2e549dc6e33211fd3ff"


def test_attack_item_key_is_pinned():
    key = item_key("unlearndiffatk", "1", {"k": 5, "iterations": 40, "lr": 0.01}, "fp1", Item(0, JOB, JOB.key()),
                   "striped", {"id": "toy", "threshold": 0.5})
    assert key == "4b8425a6c9a907798445b8799fa0a94268ea38ef35ccd88d23caded23c17e75d"
