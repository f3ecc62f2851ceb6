"""Simulation displacement: does the object stay in the static hand? (pybullet)

Protocol of ObMan / GraspTTA (method-notes sec. 5), reproduced exactly by default:
pybullet DIRECT; the hand is static (mass 0) as a concave triangle mesh
(``GEOM_MESH`` from vertices + indices with ``GEOM_FORCE_CONCAVE_TRIMESH``); the
object is dynamic, a convex decomposition by pybullet's built-in ``vhacd``, mass
1 kg, its centre (and inertial frame) at the vertex mean; lateral friction 3 for
both; restitution hand 0, object 0.5; gravity 9.8 m/s^2; time step 1/240 s; 150
solver iterations; 35 steps; the metric is the distance (m) the object's centre moved.

Gravity direction: the published code sets gravity to (0, +9.8, 0), i.e. along +y
of the data frame (a camera frame, y pointing down). That is our default; pass
``gravity`` for another frame. ``robustness`` mode repeats the check with gravity
along +-x, +-y, +-z (a grasp that holds from every side is a better training sample).

The convex decomposition is cached on disk per mesh (sha256 of the centred
vertices, faces and vhacd settings), so each object is decomposed once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import trimesh

AXIS_DIRECTIONS: np.ndarray = np.array(
    [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64
)


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    """Parameters of the displacement check (defaults = the published protocol)."""

    gravity: tuple[float, float, float] = (0.0, 9.8, 0.0)
    time_step: float = 1.0 / 240.0
    solver_iterations: int = 150
    steps: int = 35
    object_mass: float = 1.0
    hand_friction: float = 3.0
    object_friction: float = 3.0
    hand_restitution: float = 0.0
    object_restitution: float = 0.5
    # pybullet.vhacd settings (its defaults except the voxel resolution, see vhacd_decomposition)
    vhacd_resolution: int = 100_000
    vhacd_concavity: float = 0.0025
    vhacd_max_vertices_per_hull: int = 64


def default_cache_dir() -> Path:
    """``$DVQVAE_CACHE_DIR/vhacd`` or ``~/.cache/dvqvae_ros/vhacd``."""
    env = os.environ.get("DVQVAE_CACHE_DIR")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "dvqvae_ros"
    return base / "vhacd"


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence C-level stdout (pybullet's vhacd prints its progress there)."""
    try:
        fd = os.dup(1)
    except OSError:  # no real stdout (embedded interpreters)
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            try:
                yield
            finally:
                os.dup2(fd, 1)
    finally:
        os.close(fd)


def _write_obj(path: str, vertices: np.ndarray, faces: np.ndarray) -> None:
    with open(path, "w") as fh:
        fh.write("".join(f"v {x:.9g} {y:.9g} {z:.9g}\n" for x, y, z in vertices))
        fh.write("".join(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in faces))


def mesh_key(vertices: np.ndarray, faces: np.ndarray, config: SimulationConfig) -> str:
    """Cache key of a decomposition: centred geometry + vhacd settings."""
    h = hashlib.sha256()
    # rounded to 1 um so that float noise (e.g. from centring a translated copy) keeps the key
    h.update(np.ascontiguousarray(np.round(np.asarray(vertices, dtype=np.float64), 6) + 0.0).tobytes())  # +0.0: no -0.0
    h.update(np.ascontiguousarray(faces, dtype=np.int64).tobytes())
    settings = {
        "resolution": config.vhacd_resolution,
        "concavity": config.vhacd_concavity,
        "max_vertices": config.vhacd_max_vertices_per_hull,
        "v": 1,
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:32]


def vhacd_decomposition(
    mesh: trimesh.Trimesh, config: SimulationConfig = SimulationConfig(), cache_dir: str | os.PathLike | None = None
) -> tuple[Path, np.ndarray]:
    """Convex decomposition of ``mesh`` centred at its vertex mean, as an OBJ file (cached).

    Returns (path of the decomposition OBJ, the vertex mean in the mesh's frame).
    """
    import pybullet as p

    verts = np.asarray(mesh.vertices, dtype=np.float64)
    com = verts.mean(axis=0)
    centred = verts - com
    faces = np.asarray(mesh.faces, dtype=np.int64)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"{mesh_key(centred, faces, config)}.obj"
    if out.is_file() and out.stat().st_size > 0:
        return out, com
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        src = os.path.join(tmp, "in.obj")
        dst = os.path.join(tmp, "out.obj")
        _write_obj(src, centred, faces)
        client = p.connect(p.DIRECT)
        try:
            with _quiet_stdout():
                p.vhacd(
                    src,
                    dst,
                    os.path.join(tmp, "log.txt"),
                    concavity=config.vhacd_concavity,
                    resolution=config.vhacd_resolution,
                    maxNumVerticesPerCH=config.vhacd_max_vertices_per_hull,
                    physicsClientId=client,
                )
        finally:
            p.disconnect(client)
        if not os.path.isfile(dst) or os.path.getsize(dst) == 0:
            raise RuntimeError(f"pybullet.vhacd produced no decomposition for a mesh of {len(faces)} faces")
        os.replace(dst, out)  # atomic: concurrent workers never see half a file
    return out, com


class GraspSimulator:
    """One pybullet client and one object's decomposition, reused across many grasps.

    >>> with GraspSimulator(object_mesh) as sim:
    ...     d = sim.displacement(hand_vertices, hand_faces)       # metres
    """

    def __init__(
        self,
        object_mesh: trimesh.Trimesh,
        config: SimulationConfig = SimulationConfig(),
        cache_dir: str | os.PathLike | None = None,
    ):
        import pybullet as p

        self._p = p
        self.config = config
        self.decomposition_path, self.object_center = vhacd_decomposition(object_mesh, config, cache_dir)
        self.client = p.connect(p.DIRECT)
        self._setup_world()
        self.last_times: list[float] = []

    # pybullet refuses to free a mesh collision shape once a body used it ("it is used"
    # even after the body is gone), so hand shapes accumulate; the world is rebuilt
    # after this many grasps to bound memory.
    reset_every: int = 200

    def _setup_world(self) -> None:
        p, c, config = self._p, self.client, self.config
        p.resetSimulation(physicsClientId=c)
        p.setPhysicsEngineParameter(enableFileCaching=0, physicsClientId=c)
        p.setPhysicsEngineParameter(numSolverIterations=config.solver_iterations, physicsClientId=c)
        p.setPhysicsEngineParameter(fixedTimeStep=config.time_step, physicsClientId=c)
        self.object_shape = p.createCollisionShape(p.GEOM_MESH, fileName=str(self.decomposition_path), physicsClientId=c)
        if self.object_shape < 0:
            raise RuntimeError(f"pybullet could not load {self.decomposition_path}")
        self._grasps_since_reset = 0

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        if self.client is not None and self._p.isConnected(self.client):
            self._p.disconnect(self.client)
        self.client = None

    def __enter__(self) -> "GraspSimulator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ simulation
    def displacement(
        self,
        hand_vertices: np.ndarray,
        hand_faces: np.ndarray,
        gravity: Sequence[float] | None = None,
    ) -> float:
        """Distance (m) the object's centre moves in ``config.steps`` steps with the static hand."""
        p, c, cfg = self._p, self.client, self.config
        if c is None:
            raise RuntimeError("simulator is closed")
        t0 = time.perf_counter()
        if self._grasps_since_reset >= self.reset_every:
            self._setup_world()
        self._grasps_since_reset += 1
        hv = np.asarray(hand_vertices, dtype=np.float64).reshape(-1, 3)
        hf = np.asarray(hand_faces, dtype=np.int64).reshape(-1, 3)
        g = cfg.gravity if gravity is None else tuple(float(x) for x in gravity)
        p.setGravity(*g, physicsClientId=c)
        hand_shape = p.createCollisionShape(
            p.GEOM_MESH,
            vertices=hv.tolist(),
            indices=hf.reshape(-1).tolist(),
            flags=p.GEOM_FORCE_CONCAVE_TRIMESH,
            physicsClientId=c,
        )
        hand = p.createMultiBody(baseMass=0, baseCollisionShapeIndex=hand_shape, physicsClientId=c)
        p.changeDynamics(hand, -1, lateralFriction=cfg.hand_friction, restitution=cfg.hand_restitution, physicsClientId=c)
        start = self.object_center
        obj = p.createMultiBody(
            baseMass=cfg.object_mass,
            baseCollisionShapeIndex=self.object_shape,
            basePosition=start.tolist(),
            physicsClientId=c,
        )
        p.changeDynamics(obj, -1, lateralFriction=cfg.object_friction, restitution=cfg.object_restitution, physicsClientId=c)
        try:
            for _ in range(cfg.steps):
                p.stepSimulation(physicsClientId=c)
            end = np.asarray(p.getBasePositionAndOrientation(obj, physicsClientId=c)[0])
        finally:
            p.removeBody(obj, physicsClientId=c)
            p.removeBody(hand, physicsClientId=c)
        self.last_times.append(time.perf_counter() - t0)
        return float(np.linalg.norm(end - start))

    def displacements(
        self,
        hand_vertices: np.ndarray,
        hand_faces: np.ndarray,
        directions: np.ndarray | str | None = None,
    ) -> np.ndarray:
        """Displacements of a batch of hands [B,V,3] -> [B] (default gravity) or [B,D].

        ``directions``: None (the config's gravity), "axes" (the 6 signed axes) or an
        array [D,3] of directions (normalised and scaled to |config.gravity|).
        """
        hv = np.asarray(hand_vertices, dtype=np.float64)
        if hv.ndim == 2:
            hv = hv[None]
        if directions is None:
            return np.array([self.displacement(v, hand_faces) for v in hv])
        if isinstance(directions, str):
            if directions != "axes":
                raise ValueError(f"unknown directions {directions!r} (use 'axes' or an array [D,3])")
            dirs = AXIS_DIRECTIONS
        else:
            dirs = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
        mag = float(np.linalg.norm(self.config.gravity))
        dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True) * mag
        return np.array([[self.displacement(v, hand_faces, gravity=g) for g in dirs] for v in hv])


def simulate_displacement(
    hand_vertices: np.ndarray,
    hand_faces: np.ndarray,
    object_mesh: trimesh.Trimesh,
    config: SimulationConfig = SimulationConfig(),
    cache_dir: str | os.PathLike | None = None,
) -> float:
    """One-off displacement (m) of ``object_mesh`` held by a static hand [V,3] (see module doc).

    For many grasps of one object use :class:`GraspSimulator` (one client, one decomposition).
    """
    with GraspSimulator(object_mesh, config, cache_dir) as sim:
        return sim.displacement(hand_vertices, hand_faces)
