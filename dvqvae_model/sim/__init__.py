"""Simulated inputs and pictures: the depth camera (``depth_camera``, needs open3d), tabletop scenes
with per-pixel ground truth (``tabletop``, needs open3d), the sample objects (``sample_objects``) and
grasp renders (``visualize``, matplotlib).

Not imported here: each module pulls its own optional dependency only when used. Public API:
``depth_camera.capture_object_cloud`` / ``render_depth`` / ``depth_to_points``,
``sample_objects.load_object`` / ``SAMPLE_OBJECTS``, ``visualize.render_grasps_png``.
"""
