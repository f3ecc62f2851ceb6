"""Helpers of tools/make_standin_hand.py: skeleton, implicit surface, meshing, rigging."""
