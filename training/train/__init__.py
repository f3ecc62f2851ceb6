"""Training: ``config`` (TrainConfig and schedules), ``state`` (the resumable training state),
``loop`` (the loop the stages share), ``stages`` (DVQ-VAE, CVAE, prior, all) and the
``dvqvae-train`` command (``train_cli``)."""
from dvqvae_training.train.config import (
    EXIT_RESUMABLE,
    PriorTrainConfig,
    TrainConfig,
    TrainResult,
    contact_scale_at,
    lr_at,
)
from dvqvae_training.train.loop import EpochBatchSampler
from dvqvae_training.train.stages import train_all, train_cvae, train_dvqvae, train_prior
from dvqvae_training.train.state import load_training_state, read_training_state, save_training_state

__all__ = [
    "EXIT_RESUMABLE", "EpochBatchSampler", "PriorTrainConfig", "TrainConfig", "TrainResult", "contact_scale_at",
    "load_training_state", "lr_at", "read_training_state", "save_training_state", "train_all", "train_cvae",
    "train_dvqvae", "train_prior",
]
