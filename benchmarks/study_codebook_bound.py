"""How much of DVQ-VAE's reconstruction error do the hand codebooks cost? Train with them bypassed.

    python benchmarks/study_codebook_bound.py dvqvae --data data/grasps --out /tmp/noquant \
        --hand-frame object --position-sees-codes --epochs 4 --lr 3e-4 --contact-scale 0.02 \
        --contact-warmup 0.3 --num-threads 2

Runs ``dvqvae-train`` with the same arguments, except that the decoder sees the hand encoders'
continuous latents instead of their nearest codebook entries (and the codebook loss is zero): an
auto-encoder with the same networks and recipe. Its validation vertex error after an epoch, beside
the quantised run's after the same epoch (both in the runs' ``log.csv``), is the price of the
codebooks; if the unquantised error is not far below, the networks or the training are the bound
instead. The tokens and the codebook statistics are still computed (nearest entries), but a
checkpoint of this run cannot generate: its codebooks are untrained.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Iterator, Optional, Sequence

from torch import Tensor

from dvqvae_model.nets.codebook import Codebook, QuantizerOutput


@contextlib.contextmanager
def codebooks_bypassed() -> Iterator[None]:
    """Within: every ``Codebook`` passes its input through (statistics as usual, loss zero)."""
    quantise = Codebook.forward

    def bypass(self: Codebook, z: Tensor) -> QuantizerOutput:
        out = quantise(self, z)
        return dataclasses.replace(out, quantized=z, loss=out.loss * 0.0)

    Codebook.forward = bypass  # type: ignore[method-assign]
    try:
        yield
    finally:
        Codebook.forward = quantise  # type: ignore[method-assign]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from dvqvae_training.train.train_cli import main as train_main

    with codebooks_bypassed():
        return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
