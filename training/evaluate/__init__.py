"""Evaluation: grasp metrics (``metrics``: contact, penetration, simulation, diversity), the held-out
evaluation (``evaluate``) and the ``dvqvae-eval`` command (``eval_cli``)."""
