"""Paths of what ships inside the package: the bundled teacher and the text samples (``ssmquant/assets``)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TEACHER_DIR = ASSETS / "teacher"
SAMPLE_TRAIN = ASSETS / "sample" / "train.txt"
SAMPLE_HELDOUT = ASSETS / "sample" / "heldout.txt"
