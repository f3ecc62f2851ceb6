"""sensor_msgs/Image and CameraInfo <-> numpy for depth cameras (cv_bridge is not on PyPI).

Depth follows REP 118: 16UC1 in millimetres with 0 = no return (RealSense, Azure Kinect, OAK-D
default), 32FC1 in metres with NaN = no return (ZED). Decoding is ``dvqvae_model.pipeline.segmentation``'s
(ROS-free); this module only moves message fields in and out.
"""
from __future__ import annotations

import array

import numpy as np
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from dvqvae_model.sim.depth_camera import CameraIntrinsics
from dvqvae_model.pipeline.segmentation import decode_depth, decode_mask

__all__ = ["camera_info_message", "depth_from_image", "depth_image_message", "intrinsics_from_camera_info",
           "mask_from_image", "mask_image_message"]


def _bytes(arr: np.ndarray) -> array.array:
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(arr).tobytes())
    return data


def depth_image_message(header: Header, depth: np.ndarray, encoding: str = "16UC1") -> Image:
    """Depth [H, W] in metres (inf / NaN / <= 0 = no return) as a 16UC1 (mm, 0 = none) or 32FC1 (m, NaN) image."""
    depth = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    if encoding == "16UC1":
        pixels = np.where(valid, np.clip(np.round(depth * 1000.0), 1, 65535), 0).astype("<u2")
    elif encoding == "32FC1":
        pixels = np.where(valid, depth, np.float32(np.nan)).astype("<f4")
    else:
        raise ValueError(f"depth encoding must be 16UC1 or 32FC1, got {encoding!r}")
    h, w = depth.shape
    return Image(header=header, height=h, width=w, encoding=encoding, is_bigendian=0,
                 step=w * pixels.itemsize, data=_bytes(pixels))


def mask_image_message(header: Header, mask: np.ndarray) -> Image:
    """A boolean mask as mono8 (255 = object)."""
    pixels = np.where(np.asarray(mask, bool), 255, 0).astype(np.uint8)
    h, w = pixels.shape
    return Image(header=header, height=h, width=w, encoding="mono8", is_bigendian=0, step=w, data=_bytes(pixels))


def camera_info_message(header: Header, intrinsics: CameraIntrinsics) -> CameraInfo:
    """Rectified pinhole camera info (no distortion) of ``intrinsics``."""
    k = intrinsics
    return CameraInfo(header=header, width=k.width, height=k.height, distortion_model="plumb_bob",
                      d=[0.0] * 5, k=[k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0],
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=[k.fx, 0.0, k.cx, 0.0, 0.0, k.fy, k.cy, 0.0, 0.0, 0.0, 1.0, 0.0])


def intrinsics_from_camera_info(msg: CameraInfo) -> CameraIntrinsics:
    """fx, fy, cx, cy from K (the depth image's own, as depth drivers publish it); ValueError if unusable."""
    kk = [float(v) for v in msg.k]
    if len(kk) != 9 or not (kk[0] > 0 and kk[4] > 0):
        raise ValueError(f"camera_info has no intrinsics (K = {kk}); is the camera calibrated?")
    return CameraIntrinsics(width=int(msg.width), height=int(msg.height), fx=kk[0], fy=kk[4], cx=kk[2], cy=kk[5])


def depth_from_image(msg: Image) -> np.ndarray:
    """Depth [H, W] float32 metres, NaN = no return; ValueError naming an unsupported encoding or a bad buffer."""
    return decode_depth(msg.data, msg.encoding, int(msg.width), int(msg.height), int(msg.step),
                        bool(msg.is_bigendian))


def mask_from_image(msg: Image, label: int = 0) -> np.ndarray:
    """Boolean [H, W]: pixels equal to ``label``, or all non-zero pixels for label 0."""
    return decode_mask(msg.data, msg.encoding, int(msg.width), int(msg.height), int(msg.step),
                       bool(msg.is_bigendian), label)
