"""dvqvae_ros: ROS 2 nodes serving dvqvae_model grasp generation."""
