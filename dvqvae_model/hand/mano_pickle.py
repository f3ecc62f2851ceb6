"""Safe loading of MANO-format hand model pickles (official ``MANO_RIGHT.pkl`` or our stand-in).

The official file is a Python-2 pickle that mixes numpy arrays, a scipy CSC sparse matrix and
chumpy objects. A plain ``pickle.load`` executes whatever globals the stream names, so we never
use it: :class:`RestrictedUnpickler` resolves only an allow-list of numpy/scipy.sparse globals
and maps chumpy classes to small stubs that are evaluated with numpy (chumpy itself does not run
on current Python/NumPy). Everything else raises :class:`UnsafePickleError` *before* the
payload can be called.

The cleaned arrays are cached as a plain ``.npz`` (loaded with ``allow_pickle=False``) in
``$DVQVAE_CACHE_DIR`` or ``~/.cache/dvqvae_ros``, keyed by the pickle's sha256.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = [
    "UnsafePickleError",
    "MANOFormatError",
    "RestrictedUnpickler",
    "REQUIRED_KEYS",
    "NUM_VERTICES",
    "NUM_JOINTS",
    "restricted_load",
    "clean_mano_dict",
    "validate_mano_arrays",
    "load_mano_arrays",
    "cache_dir",
    "file_sha256",
]

NUM_VERTICES = 778
NUM_JOINTS = 16
NUM_POSE_BASIS = 9 * (NUM_JOINTS - 1)  # 135 pose-corrective directions
REQUIRED_KEYS = (
    "v_template",
    "f",
    "J_regressor",
    "kintree_table",
    "weights",
    "posedirs",
    "shapedirs",
    "hands_components",
    "hands_mean",
)
_CACHE_FORMAT = 1  # bump when the cleaned layout changes


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list; nothing from it was executed."""


class MANOFormatError(ValueError):
    """The file loaded safely but does not have the MANO layout (missing key, wrong shape)."""


# --------------------------------------------------------------------------------------------
# Stubs for chumpy and scipy.sparse objects: they only store pickled state, never run code.
# --------------------------------------------------------------------------------------------
class _StateStub:
    """Base for stubs: accepts NEWOBJ/_reconstructor construction and keeps BUILD state in ``state``.

    The state is kept in a dict rather than the instance ``__dict__`` so pickled data can never
    shadow the stub's own methods.
    """

    state: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> "_StateStub":  # noqa: D102 - pickle hook
        obj = object.__new__(cls)
        object.__setattr__(obj, "state", {})  # pickled attributes live here, never on the instance
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slotstate)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise MANOFormatError(f"unexpected pickled state for {type(self).__name__}: {type(state)!r}")
        self.state.update(state)

    def _attr(self, name: str) -> Any:
        if name not in self.state:
            raise MANOFormatError(f"pickled {type(self).__name__} has no '{name}' attribute")
        return self.state[name]


def _evaluate(obj: Any) -> Any:
    """Numeric value of a (possibly nested) chumpy stub; other objects pass through."""
    if isinstance(obj, _ChStub):
        return obj.value()
    return obj


class _ChStub(_StateStub):
    """chumpy.ch.Ch: a terminal node whose value is the stored array ``x``."""

    def value(self) -> np.ndarray:
        return np.asarray(_evaluate(self._attr("x")))


class _SelectStub(_ChStub):
    """chumpy.reordering.Select: ``a.ravel()[idxs].reshape(preferred_shape)``."""

    def value(self) -> np.ndarray:
        out = np.asarray(_evaluate(self._attr("a"))).ravel()[np.asarray(self._attr("idxs"))]
        if "preferred_shape" in self.state:
            out = out.reshape(tuple(self.state["preferred_shape"]))
        return out


class _ReshapeStub(_ChStub):
    """chumpy.reordering.Reshape: ``a.reshape(newshape)``."""

    def value(self) -> np.ndarray:
        return np.asarray(_evaluate(self._attr("a"))).reshape(self._attr("newshape"))


class _TransposeStub(_ChStub):
    """chumpy.reordering.transpose: ``np.transpose(a, axes)``."""

    def value(self) -> np.ndarray:
        return np.transpose(np.asarray(_evaluate(self._attr("a"))), axes=self.state.get("axes"))


class _BinaryOpStub(_ChStub):
    """chumpy.ch_ops add/subtract/multiply/divide on terms ``a`` and ``b``."""

    op: Callable[[Any, Any], Any] = staticmethod(np.add)

    def value(self) -> np.ndarray:
        return np.asarray(self.op(_evaluate(self._attr("a")), _evaluate(self._attr("b"))))


def _binary_stub(name: str, op: Callable[[Any, Any], Any]) -> type:
    return type(name, (_BinaryOpStub,), {"op": staticmethod(op), "__doc__": f"chumpy {name}"})


class _SparseStub(_StateStub):
    """scipy.sparse matrix: keeps the pickled buffers; rebuilt by :meth:`to_dense`."""

    fmt = "csc"

    def to_dense(self) -> np.ndarray:
        import scipy.sparse as sp

        d = self.state
        shape = d.get("_shape", d.get("shape"))
        if shape is None:
            raise MANOFormatError(f"pickled {self.fmt} matrix has no shape")
        shape = tuple(int(s) for s in shape)
        data = np.asarray(d.get("data"))
        if self.fmt in ("csc", "csr"):
            ctor = sp.csc_matrix if self.fmt == "csc" else sp.csr_matrix
            mat = ctor((data, np.asarray(d["indices"]), np.asarray(d["indptr"])), shape=shape)
        else:  # coo
            row = np.asarray(d.get("row", d.get("coords", (None, None))[0]))
            col = np.asarray(d.get("col", d.get("coords", (None, None))[1]))
            mat = sp.coo_matrix((data, (row, col)), shape=shape)
        return np.asarray(mat.toarray(), dtype=np.float64)


def _sparse_stub(fmt: str) -> type:
    return type(f"_{fmt.upper()}Stub", (_SparseStub,), {"fmt": fmt})


_CSC, _CSR, _COO = _sparse_stub("csc"), _sparse_stub("csr"), _sparse_stub("coo")

_CHUMPY_STUBS: dict[str, type] = {
    "Ch": _ChStub,
    "Select": _SelectStub,
    "Reshape": _ReshapeStub,
    "transpose": _TransposeStub,
    "add": _binary_stub("add", np.add),
    "subtract": _binary_stub("subtract", np.subtract),
    "multiply": _binary_stub("multiply", np.multiply),
    "divide": _binary_stub("divide", np.divide),
}
_CHUMPY_MODULES = ("chumpy.ch", "chumpy.reordering", "chumpy.ch_ops", "chumpy")

_SPARSE_STUBS: dict[str, type] = {
    "csc_matrix": _CSC,
    "csc_array": _CSC,
    "csr_matrix": _CSR,
    "csr_array": _CSR,
    "coo_matrix": _COO,
    "coo_array": _COO,
}
_SPARSE_MODULES = (
    "scipy.sparse",
    "scipy.sparse.csc",
    "scipy.sparse._csc",
    "scipy.sparse.csr",
    "scipy.sparse._csr",
    "scipy.sparse.coo",
    "scipy.sparse._coo",
    "scipy.sparse._arrays",
)

# numpy internals that only construct arrays/dtypes/scalars from bytes.
_NUMPY_CORE_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC_MODULES = ("numpy.core.numeric", "numpy._core.numeric")


def _numpy_allowed() -> dict[tuple[str, str], Any]:
    mult = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own _reconstruct, whatever its path
    scalar = np.float64(1.0).__reduce__()[0]
    try:  # numpy >= 2
        from numpy._core.numeric import _frombuffer  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer  # type: ignore[attr-defined,no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in _NUMPY_CORE_MODULES:
        allowed[(mod, "_reconstruct")] = mult
        allowed[(mod, "scalar")] = scalar
    for mod in _NUMPY_NUMERIC_MODULES:
        allowed[(mod, "_frombuffer")] = _frombuffer
    return allowed


_ALLOWED_BUILTINS: dict[str, Any] = {"set": set, "frozenset": frozenset}
def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 writes bytes into protocol <= 2 pickles; text codecs only."""
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1", errors)


_RECONSTRUCTOR_NAMES = {("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")}


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor limited to our stub classes on an ``object`` base."""
    if not (isinstance(cls, type) and issubclass(cls, _StateStub)) or base is not object:
        raise UnsafePickleError(
            f"refusing copyreg._reconstructor({getattr(cls, '__name__', cls)!r}, "
            f"{getattr(base, '__name__', base)!r}): only allowed chumpy/scipy.sparse classes"
        )
    if state is not None:
        raise UnsafePickleError("refusing copyreg._reconstructor with a base-class state")
    return cls.__new__(cls)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals (numpy arrays, scipy.sparse, chumpy stubs)."""

    _numpy = _numpy_allowed()

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle hook
        if (module, name) in self._numpy:
            return self._numpy[(module, name)]
        if module in _CHUMPY_MODULES and name in _CHUMPY_STUBS:
            return _CHUMPY_STUBS[name]
        if module in _SPARSE_MODULES and name in _SPARSE_STUBS:
            return _SPARSE_STUBS[name]
        if (module, name) in _RECONSTRUCTOR_NAMES:
            return _safe_reconstructor
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if module in ("__builtin__", "builtins"):
            if name in _ALLOWED_BUILTINS:
                return _ALLOWED_BUILTINS[name]
            if name == "object":  # only meaningful as the base argument of _reconstructor
                return object
        raise UnsafePickleError(
            f"refusing to load global '{module}.{name}': only numpy arrays, scipy.sparse matrices "
            "and chumpy arrays are allowed in a MANO model file"
        )

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102 - pickle hook
        raise UnsafePickleError(f"refusing persistent id {pid!r} in a MANO model file")


def restricted_load(data: bytes) -> Any:
    """Unpickle ``data`` (Python-2 compatible, latin1) with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


# --------------------------------------------------------------------------------------------
# Cleaning and validation
# --------------------------------------------------------------------------------------------
def _to_numeric(key: str, value: Any) -> np.ndarray:
    if isinstance(value, _ChStub):
        value = value.value()
    elif isinstance(value, _SparseStub):
        value = value.to_dense()
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise MANOFormatError(f"'{key}' must be numeric, got dtype {arr.dtype}")
    return arr


def clean_mano_dict(raw: Any) -> dict[str, np.ndarray]:
    """Turn the unpickled MANO dict into plain numpy arrays (float64 geometry, int64 indices)."""
    if not isinstance(raw, dict):
        raise MANOFormatError(f"a MANO model file must hold a dict, got {type(raw).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise MANOFormatError(f"MANO model file lacks keys {missing}; present: {sorted(map(str, raw))}")
    out: dict[str, np.ndarray] = {}
    for key in REQUIRED_KEYS:
        arr = _to_numeric(key, raw[key])
        if key in ("f", "kintree_table"):
            if arr.dtype.kind == "f":
                raise MANOFormatError(f"'{key}' must hold integers, got {arr.dtype}")
            arr = arr.astype(np.int64)
        else:
            arr = np.ascontiguousarray(arr, dtype=np.float64)
        out[key] = np.ascontiguousarray(arr)
    # MANO stores the root's parent as uint32(-1); make it a proper -1.
    out["kintree_table"] = out["kintree_table"].copy()
    if out["kintree_table"].ndim == 2 and out["kintree_table"].shape[1] > 0:
        out["kintree_table"][0, 0] = -1
    validate_mano_arrays(out)
    return out


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise MANOFormatError(msg)


def validate_mano_arrays(a: dict[str, np.ndarray], num_vertices: int = NUM_VERTICES) -> None:
    """Check every array has the shape ``smplx.MANO`` expects; raise a clear MANOFormatError."""
    v = a["v_template"]
    _expect(v.ndim == 2 and v.shape[1] == 3, f"v_template must be [V,3], got {list(v.shape)}")
    _expect(v.shape[0] == num_vertices, f"expected {num_vertices} vertices, got {v.shape[0]}")
    V, J = v.shape[0], NUM_JOINTS
    f = a["f"]
    _expect(f.ndim == 2 and f.shape[1] == 3, f"f must be [F,3] triangles, got {list(f.shape)}")
    _expect(f.size > 0 and f.min() >= 0 and f.max() < V, f"face indices must lie in [0,{V}), got [{f.min()},{f.max()}]")
    jr = a["J_regressor"]
    _expect(jr.shape == (J, V), f"J_regressor must be [{J},{V}], got {list(jr.shape)}")
    kt = a["kintree_table"]
    _expect(kt.shape == (2, J), f"kintree_table must be [2,{J}], got {list(kt.shape)}")
    parents = kt[0, 1:]
    _expect(bool(np.all((parents >= 0) & (parents < np.arange(1, J)))), "kintree_table parents must precede children")
    w = a["weights"]
    _expect(w.shape == (V, J), f"weights must be [{V},{J}], got {list(w.shape)}")
    pd = a["posedirs"]
    _expect(pd.shape == (V, 3, NUM_POSE_BASIS), f"posedirs must be [{V},3,{NUM_POSE_BASIS}], got {list(pd.shape)}")
    sd = a["shapedirs"]
    _expect(
        sd.ndim == 3 and sd.shape[:2] == (V, 3) and sd.shape[2] >= 10,
        f"shapedirs must be [{V},3,>=10], got {list(sd.shape)}",
    )
    hc = a["hands_components"]
    _expect(hc.shape == (45, 45), f"hands_components must be [45,45], got {list(hc.shape)}")
    hm = a["hands_mean"]
    _expect(hm.shape == (45,), f"hands_mean must be [45], got {list(hm.shape)}")
    for key in REQUIRED_KEYS:
        if a[key].dtype.kind == "f":
            _expect(bool(np.all(np.isfinite(a[key]))), f"'{key}' contains non-finite values")


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Cache directory for derived data: ``$DVQVAE_CACHE_DIR`` or ``~/.cache/dvqvae_ros``."""
    env = os.environ.get("DVQVAE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dvqvae_ros"


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz via a temp file in the same directory + os.replace (readers never see halves)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the file is shared data, not a secret
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _cache_path(digest: str) -> Path:
    return cache_dir() / f"mano_arrays_v{_CACHE_FORMAT}_{digest}.npz"


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in REQUIRED_KEYS}
        validate_mano_arrays(arrays)
        return arrays
    except (OSError, KeyError, ValueError):  # missing, truncated or stale: recompute
        return None


def load_mano_arrays(path: str | os.PathLike[str], use_cache: bool = True) -> dict[str, np.ndarray]:
    """Safely load a MANO-format pickle into a dict of numpy arrays (cached by file sha256)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"MANO model file not found: {p} (download MANO_RIGHT.pkl from https://mano.is.tue.mpg.de "
            "and pass its path, or use the bundled 'standin')"
        )
    data = p.read_bytes()
    digest = file_sha256(data)
    cpath = _cache_path(digest)
    if use_cache and cpath.is_file():
        cached = _read_cache(cpath)
        if cached is not None:
            return cached
    try:
        raw = restricted_load(data)
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError) as exc:
        raise MANOFormatError(f"{p} is not a readable MANO pickle: {exc}") from exc
    try:
        arrays = clean_mano_dict(raw)
    except RecursionError as exc:  # e.g. a chumpy node that refers to itself
        raise MANOFormatError(f"{p}: cyclic chumpy objects") from exc
    if use_cache:
        try:
            atomic_save_npz(cpath, arrays)
        except OSError:  # read-only home etc.: caching is an optimisation only
            pass
    return arrays

