"""dvqvae_training: grasp data synthesis, datasets, training loops and evaluation."""
