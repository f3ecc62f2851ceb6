"""The networks: point encoders, codebook, gating, the DVQ-VAE and CVAE, the token prior, their
losses and config presets, and the sampling graph they form with the hand layer (what is exported)."""
from dvqvae_model.nets.config import cvae_config, dvqvae_config, preset, prior_config
from dvqvae_model.nets.cvae import CVAEConfig, GraspCVAE
from dvqvae_model.nets.dvqvae import DVQVAE, DVQVAEConfig
from dvqvae_model.nets.losses import LossWeights, grasp_losses
from dvqvae_model.nets.prior import GatedPixelCNNPrior, PriorConfig, gumbel_noise
from dvqvae_model.nets.sampling_graph import CVAESamplingGraph, SamplingGraph, ScoreWeights

__all__ = [
    "CVAEConfig", "CVAESamplingGraph", "DVQVAE", "DVQVAEConfig", "GatedPixelCNNPrior", "GraspCVAE", "LossWeights",
    "PriorConfig", "SamplingGraph", "ScoreWeights", "cvae_config", "dvqvae_config", "grasp_losses", "gumbel_noise",
    "preset", "prior_config",
]
