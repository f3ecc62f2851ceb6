"""Inference, in the order the data flows: (depth image / scene cloud -> ``segmentation`` -> object
cloud) -> ``preprocess`` -> sampling graph (``nets`` + ``hand``, run by a ``runtime`` backend) ->
``refine`` -> ``GraspSet`` (``generator`` ties them). ``segmentation`` is imported on use (it needs
open3d)."""
from dvqvae_model.pipeline.generator import GraspGenerator, GraspSet
from dvqvae_model.pipeline.preprocess import CloudError, PreparedCloud, prepare_cloud
from dvqvae_model.pipeline.refine import RefineConfig, refine_grasps

__all__ = ["CloudError", "GraspGenerator", "GraspSet", "PreparedCloud", "RefineConfig", "prepare_cloud",
           "refine_grasps"]
