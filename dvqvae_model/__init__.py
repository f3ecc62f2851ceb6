"""dvqvae_model: the DVQ-VAE grasp generation library (hand models, networks, inference). Knows nothing of ROS."""
