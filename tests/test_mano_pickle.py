"""Restricted loading of MANO-format pickles: chumpy/scipy/legacy globals load, anything else is refused."""
from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from dvqvae_model.hand import mano_pickle as mp

V, J = 778, 16


# ---------------------------------------------------------------------------------------------
# A fake `chumpy` importable only while pickling, so the stream names chumpy.ch.Ch etc.
# ---------------------------------------------------------------------------------------------
def _fake_ch_init(self, x: np.ndarray) -> None:
    # mimic chumpy's pickled __dict__ (incl. a set, as Ch._dirty_vars)
    self.x = x
    self._dirty_vars = {"x"}
    self._itr = None
    self._make_dense = False
    self._depends_on_deps = {}


def _fake_select_init(self, a: object, idxs: np.ndarray, preferred_shape: tuple[int, ...]) -> None:
    self.a = a
    self.idxs = idxs
    self.preferred_shape = preferred_shape
    self._dirty_vars = set()


FAKE: dict[str, type] = {}


@pytest.fixture()
def fake_chumpy(monkeypatch: pytest.MonkeyPatch):
    """Temporarily importable chumpy.ch.Ch / chumpy.reordering.Select classes (for pickling only)."""
    pkg = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")
    reo = types.ModuleType("chumpy.reordering")
    ch.Ch = type("Ch", (), {"__init__": _fake_ch_init, "__module__": "chumpy.ch"})
    reo.Select = type("Select", (), {"__init__": _fake_select_init, "__module__": "chumpy.reordering"})
    FAKE["Ch"], FAKE["Select"] = ch.Ch, reo.Select
    for m in (pkg, ch, reo):
        monkeypatch.setitem(sys.modules, m.__name__, m)
    yield


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.random((V, J))
    jr = np.zeros((J, V))
    for j in range(J):
        ids = rng.choice(V, 20, replace=False)
        jr[j, ids] = 1.0 / 20
    parents = np.array([2**32 - 1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14], np.uint32)  # root as uint32(-1)
    kt = np.stack([parents, np.arange(J, dtype=np.uint32)])
    return {
        "v_template": rng.normal(size=(V, 3)) * 0.05,
        "f": rng.integers(0, V, size=(1538, 3)).astype(np.uint32),
        "J_regressor": jr,
        "kintree_table": kt,
        "weights": w / w.sum(1, keepdims=True),
        "posedirs": rng.normal(size=(V, 3, 135)) * 1e-3,
        "shapedirs": rng.normal(size=(V, 3, 10)) * 1e-3,
        "hands_components": rng.normal(size=(45, 45)),
        "hands_mean": rng.normal(size=45) * 0.1,
    }


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python-2 ``str`` opcodes (as in the official file) instead of _codecs.encode."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _mano_like_pickle(arrays: dict[str, np.ndarray], protocol: int, legacy: bool) -> bytes:
    """Pickle with MANO's mix: chumpy Select(Ch) shapedirs, CSC J_regressor, Python-2 style names."""
    d: dict[str, object] = dict(arrays)
    sd = arrays["shapedirs"]
    d["shapedirs"] = FAKE["Select"](FAKE["Ch"](sd.ravel()[::-1].copy()), np.arange(sd.size)[::-1].copy(), sd.shape)
    d["J_regressor"] = sp.csc_matrix(arrays["J_regressor"])
    d["hands_mean"] = FAKE["Ch"](arrays["hands_mean"])
    d["bs_style"] = "lbs"
    if legacy:
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=protocol).dump(d)
        data = buf.getvalue()
        assert b"_codecs" not in data
    else:
        data = pickle.dumps(d, protocol=protocol)
    if legacy:  # module paths as written by Python 2 / old numpy and scipy
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        data = data.replace(b"scipy.sparse._csc", b"scipy.sparse.csc")
    return data


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("DVQVAE_CACHE_DIR", str(d))
    return d


def _check_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(mp.REQUIRED_KEYS) <= set(got)
    for k in mp.REQUIRED_KEYS:
        if k == "kintree_table":
            exp = want[k].astype(np.int64)
            exp[0, 0] = -1
            np.testing.assert_array_equal(got[k], exp)
            assert got[k].dtype == np.int64
        elif k == "f":
            np.testing.assert_array_equal(got[k], want[k])
            assert got[k].dtype == np.int64
        else:
            np.testing.assert_allclose(got[k], want[k], rtol=0, atol=0)
            assert got[k].dtype == np.float64


@pytest.mark.parametrize("protocol,legacy", [(2, True), (1, True), (4, False)])
def test_chumpy_pickle_loads_without_chumpy(fake_chumpy, tmp_path: Path, cache: Path, protocol: int, legacy: bool) -> None:
    arrays = _arrays()
    data = _mano_like_pickle(arrays, protocol, legacy)
    assert b"chumpy" in data and (b"copy_reg" in data or protocol >= 2)
    if legacy:
        assert b"numpy.core.multiarray" in data and b"scipy.sparse.csc" in data
    # drop the fake chumpy before loading: the loader must not import it
    for m in ("chumpy", "chumpy.ch", "chumpy.reordering"):
        sys.modules.pop(m, None)
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(data)
    got = mp.load_mano_arrays(path)
    _check_equal(got, arrays)
    assert "chumpy" not in sys.modules


class _Evil:
    def __init__(self, func, args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.Popen", "builtins.exec"])
def test_foreign_global_is_refused_and_never_runs(tmp_path: Path, cache: Path, target: str) -> None:
    marker = tmp_path / "pwned"
    cmd = f"touch {marker}"
    funcs = {"os.system": os.system, "builtins.eval": eval, "subprocess.Popen": subprocess.Popen, "builtins.exec": exec}
    func = funcs[target]
    args = {
        "os.system": (cmd,),
        "builtins.eval": (f"open({str(marker)!r}, 'w').close()",),
        "subprocess.Popen": (["touch", str(marker)],),
        "builtins.exec": (f"open({str(marker)!r}, 'w').close()",),
    }[target]
    payload = dict(_arrays())
    payload["v_template"] = _Evil(func, args)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(mp.UnsafePickleError) as err:
        mp.load_mano_arrays(path)
    name = target.split(".")[1]
    assert name in str(err.value) and "refusing to load global" in str(err.value)
    assert not marker.exists()
    assert not cache.exists() or not list(cache.glob("*.npz"))


def test_reconstructor_only_for_allowed_classes(tmp_path: Path) -> None:
    # copy_reg._reconstructor(set, object, None) is a legal-looking but non-allowed reconstruction.
    data = b"ccopy_reg\n_reconstructor\n(c__builtin__\nset\nc__builtin__\nobject\nNtR."
    with pytest.raises(mp.UnsafePickleError, match="_reconstructor"):
        mp.restricted_load(data)


def test_cache_is_used_and_atomic(fake_chumpy, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = _arrays(1)
    data = _mano_like_pickle(arrays, 2, True)
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(data)

    # A failure while writing the cache leaves neither a partial file nor a temp file behind.
    real_savez = np.savez

    def failing_savez(fh, **kw):
        fh.write(b"partial")
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(np, "savez", failing_savez)
        got = mp.load_mano_arrays(path)  # caching failure is not fatal
    _check_equal(got, arrays)
    assert np.savez is real_savez
    assert cache.is_dir() and list(cache.iterdir()) == []

    mp.load_mano_arrays(path)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    assert mp.file_sha256(data) in files[0].name
    with np.load(files[0], allow_pickle=False) as z:  # plain arrays, no pickle inside
        assert set(mp.REQUIRED_KEYS) <= set(z.files)

    # Second load comes from the cache: the unpickler is not called at all.
    def boom(_data: bytes):
        raise AssertionError("unpickler called despite cache")

    with monkeypatch.context() as m:
        m.setattr(mp, "restricted_load", boom)
        _check_equal(mp.load_mano_arrays(path), arrays)

    # A corrupt cache file is ignored and rewritten.
    files[0].write_bytes(b"garbage")
    _check_equal(mp.load_mano_arrays(path), arrays)
    with np.load(files[0], allow_pickle=False) as z:
        assert z["v_template"].shape == (V, 3)


def test_shape_errors_are_clear(tmp_path: Path, cache: Path) -> None:
    arrays = _arrays()
    arrays["v_template"] = arrays["v_template"][:777]
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(arrays, protocol=2))
    with pytest.raises(mp.MANOFormatError, match="expected 778 vertices, got 777"):
        mp.load_mano_arrays(path)

    arrays = _arrays()
    del arrays["weights"]
    path.write_bytes(pickle.dumps(arrays, protocol=2))
    with pytest.raises(mp.MANOFormatError, match="lacks keys.*weights"):
        mp.load_mano_arrays(path)

    arrays = _arrays()
    arrays["posedirs"] = arrays["posedirs"][:, :, :100]
    path.write_bytes(pickle.dumps(arrays, protocol=2))
    with pytest.raises(mp.MANOFormatError, match=r"posedirs must be \[778,3,135\]"):
        mp.load_mano_arrays(path)

    with pytest.raises(FileNotFoundError, match="not found"):
        mp.load_mano_arrays(tmp_path / "missing.pkl")

    path.write_bytes(b"not a pickle at all")
    with pytest.raises(mp.MANOFormatError, match="not a readable MANO pickle"):
        mp.load_mano_arrays(path)
