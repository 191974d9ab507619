"""The shipped checkpoints still reach the bits per byte their cards state, on held-out files
that ship in the repository (the card's "Check" line, written by `training.export --check`)."""

from pathlib import Path

import pytest

from adapters import checkpoints
from model import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p for p in (ROOT / "checkpoints").iterdir() if (p / "config.json").is_file())


def test_every_shipped_checkpoint_states_a_check():
    assert SHIPPED
    missing = [p.name for p in SHIPPED if checkpoints.stated_check(p) is None]
    assert not missing, f"cards without a check line: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_a_shipped_checkpoint_reaches_its_stated_bits_per_byte(folder):
    stated, pattern = checkpoints.stated_check(folder)
    model, layout = load_checkpoint(folder)
    measured = checkpoints.measure_check(model, checkpoints.Layout.from_dict(layout), pattern, ROOT)
    # the same weights on the same files: equal but for the order of floating-point sums
    assert measured["bits"] == pytest.approx(stated, abs=2e-3)
