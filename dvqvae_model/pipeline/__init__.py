"""Inference, in the order the data flows: cloud -> ``preprocess`` -> sampling graph (``nets`` +
``hand``, run by a ``runtime`` backend) -> ``refine`` -> ``GraspSet`` (``generator`` ties them)."""
from dvqvae_model.pipeline.generator import GraspGenerator, GraspSet
from dvqvae_model.pipeline.preprocess import CloudError, PreparedCloud, prepare_cloud
from dvqvae_model.pipeline.refine import RefineConfig, refine_grasps

__all__ = ["CloudError", "GraspGenerator", "GraspSet", "PreparedCloud", "RefineConfig", "prepare_cloud",
           "refine_grasps"]
