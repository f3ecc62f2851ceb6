"""The generation settings the node and ``dvqvae-grasp generate`` share (one source of defaults).

Why one place: offline grasps must match what the node publishes. The values were chosen from
``benchmarks/bench_ranking.py`` (quality vs latency, K = 8 and 16, full and partial clouds; the
table is in the README).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULTS", "GenerationDefaults"]


@dataclass(frozen=True)
class GenerationDefaults:
    num_grasps: int = 8
    candidates: int = 64  # sampled per cloud, the best num_grasps kept (8x the default K)
    ranking: bool = True  # rank candidates by grasp_quality (False + candidates = K: the raw path)
    refine: bool = False  # refine the kept grasps (dvqvae_model.pipeline.refine); off: within a node-sized budget it changed nothing measurable (README)
    refine_steps: int = 20
    refine_time_ms: float = 60.0  # wall-time budget of one refinement call
    refine_top: int = 0  # refine this many best grasps per cloud (0 = all kept grasps)
    # the direction gravity pulls in, in the cloud's frame: +y is "down" in a camera's optical frame
    # (x right, y down, z forward), the frame a depth camera publishes and the one in which the
    # evaluation's simulator pulls (ObMan / GraspTTA protocol). (0, 0, 0): unknown. A cloud in a
    # z-up robot frame needs (0, 0, -1).
    gravity: tuple[float, float, float] = (0.0, 1.0, 0.0)

    def generator_options(self) -> dict[str, Any]:
        """``GraspGenerator`` keyword options for these settings (the node's, offline or online).

        (``refine.RefineConfig`` takes its defaults from here, so this module imports nothing.)"""
        return {"candidates": self.candidates, "ranking": self.ranking, "refine": self.refine,
                "refine_steps": self.refine_steps, "refine_time_ms": self.refine_time_ms, "gravity": self.gravity}


DEFAULTS = GenerationDefaults()
