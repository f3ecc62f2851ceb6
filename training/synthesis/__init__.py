"""Synthesis of the training set: procedural objects (``objects``, ``implicit``), grasp types,
the grasp synthesizer and the geometry it needs (``sdf``: signed distances, occupancy lattices;
``physics``: the pybullet shake test). Public API: ``synthesizer.GraspSynthesizer`` / ``SynthConfig``,
``objects.make_object`` / ``ObjectRecipe``, ``physics.GraspSimulator``."""
