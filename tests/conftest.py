"""Fixtures shared by the test modules."""
from __future__ import annotations

import pytest
import torch

from dvqvae_model.hand.hand_model import HandModel, load_hand_model


@pytest.fixture(scope="module")
def hand() -> HandModel:
    """The bundled stand-in hand; one per test module, so a module that changes it affects no other."""
    return load_hand_model("standin")


@pytest.fixture(scope="module")
def one_thread():
    """Two shared cores: more torch threads than one only add contention (training-heavy modules)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
