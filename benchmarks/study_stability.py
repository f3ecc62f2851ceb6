"""Which stability features predict simulated displacement? Measured on validation-split objects.

    python benchmarks/study_stability.py collect --ids-file val_ids.txt --max-objects 40 --out /tmp/stab
    python benchmarks/study_stability.py analyse --out /tmp/stab [--fit]

``collect``: for validation-split objects (evenly spread over the listed ids; never the test
split), the full surface cloud and one simulated depth view each, samples ``--candidates`` grasps
with the node's ranking generator (seeded) and measures every candidate with the independent
metrics of ``dvqvae-eval`` (penetration volume on a 1 mm lattice, pybullet displacement,
contact). One ``.npz`` per object in ``--out`` (a stopped run resumes; the cloud as the generator
prepared it and the candidates' parameters are stored, so features can be recomputed without
simulating again).

``analyse``: recomputes the ranking terms and every feature of
``dvqvae_model.pipeline.stability`` with the current code and prints, per cloud type, the
Spearman rank correlation of each with penetration and displacement (within each cloud's
candidates, averaged), and the mean penetration / displacement / Q of the best ``--keep`` of each
cloud's candidates picked by: the current score, the score with the ``stability`` term of
``QualityWeights`` (as configured in the code), the true Q (oracle) and at random.
``--subsets 16,32,64`` shows what the node's candidate count buys (the code's score over random
subsets of each cloud's candidates). ``--fit`` fits the fall model (a logistic regression of
"displacement > --fall-cm" on the standardised ``--features``) with 5-fold cross-validation over
objects, shows the kept quality for a range of the term's weight, and prints the numbers to paste
into ``StabilityModel``; ``--sweep`` ranks with the code's ``combine_terms`` and the held-out fall
probability while one ``QualityWeights`` field takes other values; ``--gbt`` cross-validates the
fall trees (``dvqvae_model.pipeline.boosted_trees``) the same way and ``--save-trees`` fits them on
every candidate and writes the JSON the package ships; it also cross-validates the penetration
trees (the learnt ``penetration_est``) and ranks with both, and ``--save-pen-trees`` saves those;
likewise the displacement trees (``displacement_est``) and the score with both estimates (the
estimated Q), saved with ``--save-disp-trees``.
Terms and features are computed with the simulator's gravity direction (+y of the input frame)
unless ``--no-gravity``.
"""
from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ranking import Q_WEIGHTS, Evaluator, partial_view  # noqa: E402


def _generator():
    from dvqvae_model.checkpoint import DEFAULT_MODEL_DIR, resolve_checkpoint
    from dvqvae_model.pipeline.defaults import DEFAULTS
    from dvqvae_model.pipeline.generator import GraspGenerator

    from dataclasses import replace

    from dvqvae_model.pipeline.boosted_trees import BUNDLED, BUNDLED_DISPLACEMENT, BUNDLED_PENETRATION
    from dvqvae_model.pipeline.grasp_quality import QualityWeights

    opts = {**DEFAULTS.generator_options(), "refine": False, "ranking": True}
    qw = QualityWeights()
    if qw.stability_model.trees == "bundled" and not BUNDLED.exists():  # fitting the first trees: logistic meanwhile
        print(f"# {BUNDLED} does not exist: scoring with the logistic fall model", file=sys.stderr)
        qw = replace(qw, stability_model=replace(qw.stability_model, trees=""))
    if qw.penetration_model == "bundled" and not BUNDLED_PENETRATION.exists():
        print(f"# {BUNDLED_PENETRATION} does not exist: scoring with the cloud's penetration term", file=sys.stderr)
        qw = replace(qw, penetration_model="")
    if qw.displacement_model == "bundled" and not BUNDLED_DISPLACEMENT.exists():
        print(f"# {BUNDLED_DISPLACEMENT} does not exist: scoring without the displacement estimate", file=sys.stderr)
        qw = replace(qw, displacement_model="")
    return GraspGenerator.from_checkpoint(resolve_checkpoint("default", default_dir=DEFAULT_MODEL_DIR),
                                          quality_weights=qw, **opts)


def collect(args) -> None:
    from dvqvae_training.dataset.dataset_format import DatasetReader
    from dvqvae_training.dataset.datasets import mesh_from_source

    reader = DatasetReader(args.data)
    ids = reader.object_ids(args.split)
    if args.split == "test":
        raise SystemExit("the study chooses weights: never on the test split")
    if args.ids_file:
        listed = [s.strip() for s in Path(args.ids_file).read_text().split() if s.strip()]
        ids = [i for i in listed if i in set(ids)]
    n = min(len(ids), args.max_objects) if args.max_objects else len(ids)
    chosen = [ids[int(i)] for i in np.linspace(0, len(ids) - 1, n).round().astype(int)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen = _generator()
    t0 = time.time()
    for oi, oid in enumerate(chosen):
        path = out / f"{oid}.npz"
        if path.exists():
            continue
        o = reader.object(oid)
        mesh = mesh_from_source(o["source"])
        ev = Evaluator(mesh, gen.hand, args.pitch_mm / 1000.0)
        rec = {}
        try:
            seed_base = 7000 + zlib.crc32(oid.encode()) % 100_000  # per object, whatever the selection
            clouds = {"full": np.asarray(o["points"], np.float32), "partial": partial_view(mesh, seed_base)}
            for view, cloud in clouds.items():
                seed = seed_base
                gs = gen.generate(cloud, args.candidates, seed=seed, candidates=args.candidates)
                prep = gen._prepare(cloud, seed)
                m = ev(gs.vertices)
                rec.update({f"{view}_points": prep.points, f"{view}_centre": np.asarray(prep.centre),
                            f"{view}_rotation": np.asarray(prep.rotation),
                            f"{view}_params": gs.params, f"{view}_prior": gs.terms["prior"],
                            f"{view}_score": gs.scores, f"{view}_pen": m["pen"], f"{view}_disp": m["disp"],
                            f"{view}_contact": m["contact"]})
        finally:
            ev.close()
        np.savez(path.with_suffix(".tmp.npz"), **rec)
        path.with_suffix(".tmp.npz").rename(path)
        print(f"  {oi + 1}/{len(chosen)} {oid} ({time.time() - t0:.0f} s)", flush=True)


def load(out: str, gen, variants: list[dict] | None = None, gravity: bool = True) -> dict[str, list[dict]]:
    """Per cloud type, one dict per cloud: metrics and every term / feature recomputed now (with the
    simulator's gravity direction, +y of the input frame, unless ``gravity`` is False)."""
    import torch

    from dataclasses import replace

    from dvqvae_model.pipeline.grasp_quality import VERTEX_STRIDE, CloudSurface, quality_terms
    from dvqvae_model.pipeline.view_shadow import shadow_features
    data: dict[str, list[dict]] = {"full": [], "partial": []}
    for path in sorted(Path(out).glob("*.npz")):
        if path.name.endswith(".tmp.npz"):
            continue
        z = np.load(path)
        for view in data:
            pts = torch.from_numpy(z[f"{view}_points"]).float()[None]
            params = torch.from_numpy(z[f"{view}_params"]).float()
            centre = torch.from_numpy(z[f"{view}_centre"]).float()
            if f"{view}_rotation" not in z.files and gen.prepare_kwargs.get("frame") == "principal":
                raise SystemExit(f"{path}: collected without the cloud's rotation; collect again")
            rotation = torch.from_numpy(z[f"{view}_rotation"]).float() if f"{view}_rotation" in z.files else torch.eye(3)
            with torch.no_grad():
                # the stored grasps are in the input frame, the stored points in the model's frame
                hand_out = gen.hand.from_params(params)
                hand_out = replace(hand_out, vertices=(hand_out.vertices - centre) @ rotation.T,
                                   keypoints=(hand_out.keypoints - centre) @ rotation.T)
                prior = torch.from_numpy(z[f"{view}_prior"]).float()
                graph = gen._graph_score_of(prior, pts, hand_out)
                # the simulator pulls along +y of the input frame: R[:, 1] in the model frame
                g = rotation[:, 1].unsqueeze(0) if gravity else None
                score, terms = gen.score_candidates(pts, CloudSurface(pts), hand_out.vertices, hand_out.keypoints,
                                                    graph, g)
            rec = {"object": path.stem, "view": view, "pen": z[f"{view}_pen"], "disp": z[f"{view}_disp"],
                   "touches": z[f"{view}_contact"], "score": score.numpy(), "stored_score": z[f"{view}_score"]}
            rec.update({k: v.numpy() for k, v in terms.items() if v.dim() == 1})
            if "f_thickness" not in rec:  # scored without penetration trees: the features they would see
                surface = CloudSurface(pts)
                v = hand_out.vertices[:, ::VERTEX_STRIDE]
                shadow = shadow_features(surface.points, surface.normals, surface.spacing, v,
                                         gen._vertex_areas[::VERTEX_STRIDE] * float(VERTEX_STRIDE))
                rec.update({f"f_{k}": t.numpy() for k, t in shadow.items()})
            for var in variants or []:  # the features with other settings (StabilityWeights fields)
                qw = replace(gen.quality_weights, stability_model=replace(gen.quality_weights.stability_model, **var))
                with torch.no_grad():
                    other = quality_terms(CloudSurface(pts), hand_out.vertices, gen.hand.part_ids, gen._vertex_areas,
                                          None, qw)
                tag = ",".join(f"{k}={v:g}" for k, v in var.items())
                rec.update({f"{k}@{tag}": v.numpy() for k, v in other.items() if k.startswith("f_")})
            data[view].append(rec)
    return data


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(spearmanr(a, b)[0])


def partial_spearman(a: np.ndarray, b: np.ndarray, control: np.ndarray) -> float:
    """Spearman of a and b with the control's (rank-linear) part removed from both."""
    from scipy.stats import rankdata

    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    ra, rb, rc = (rankdata(x) for x in (a, b, control))
    rc = rc - rc.mean()
    res = [r - r.mean() - rc * ((r - r.mean()) @ rc) / max(rc @ rc, 1e-12) for r in (ra, rb)]
    den = np.linalg.norm(res[0]) * np.linalg.norm(res[1])
    return float(res[0] @ res[1] / den) if den > 0 else float("nan")


def kept_quality(clouds: list[dict], key, keep: int) -> tuple[float, float, float]:
    """Mean (penetration, displacement, Q) of the ``keep`` best of each cloud by ``key(cloud)`` (higher = kept)."""
    pen, disp = [], []
    for c in clouds:
        idx = np.argsort(-key(c), kind="stable")[:keep]
        pen.append(c["pen"][idx])
        disp.append(c["disp"][idx])
    p, d = float(np.concatenate(pen).mean()), float(np.concatenate(disp).mean())
    return p, d, Q_WEIGHTS[0] * p + Q_WEIGHTS[1] * d


def _features(c: dict, names: list[str]) -> np.ndarray:
    """[candidates, features] of one cloud: the stability features (``f_<name>``) or a diagnostic column."""
    return np.stack([c[f"f_{n}"] if f"f_{n}" in c else c[n] for n in names], 1)


def fit_fall(clouds: list[dict], names: list[str], threshold_cm: float, c_reg: float = 1.0):
    """Logistic regression of "the object falls" (displacement > threshold) on standardised features.

    -> (mean, std, coef, intercept) as plain numbers (no pickle: they go into ``StabilityModel``)."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([_features(c, names) for c in clouds]).astype(np.float64)
    y = np.concatenate([c["disp"] > threshold_cm for c in clouds])
    mean, std = x.mean(0), x.std(0) + 1e-9
    m = LogisticRegression(C=c_reg, max_iter=5000).fit((x - mean) / std, y)
    return mean, std, m.coef_[0], float(m.intercept_[0])


def fall_probability(c: dict, names: list[str], model) -> np.ndarray:
    mean, std, coef, icpt = model
    x = (_features(c, names) - mean) / std
    return 1.0 / (1.0 + np.exp(-(x @ coef + icpt)))


def analyse(args) -> None:
    from dvqvae_model.pipeline.stability import FEATURE_NAMES

    gen = _generator()
    variants = [{k: float(v) for k, v in (kv.split("=") for kv in var.split(","))}
                for var in args.variants.split(";") if var]
    data = load(args.out, gen, variants, gravity=not args.no_gravity)
    n_obj = len(data["full"])
    print(f"{n_obj} objects, {len(data['full'][0]['pen']) if n_obj else 0} candidates per cloud; keep {args.keep}")
    terms = ["score", "prior", "penetration", "contact", "closure", "digits", "stability"] + \
        [f"f_{n}" for n in FEATURE_NAMES] + \
        sorted(k for k in (data["full"][0] if n_obj else {}) if "@" in k)
    print("\nSpearman within each cloud's candidates, averaged (+ = a larger value goes with a larger metric)")
    print("| term | full: vs pen. | full: vs disp. | partial: vs pen. | partial: vs disp. | full: disp. given pen. "
          "| partial: disp. given pen. |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for t in terms:
        cells = []
        for view in ("full", "partial"):
            for metric in ("pen", "disp"):
                vals = [spearman(c[t], c[metric]) for c in data[view]]
                cells.append(f"{np.nanmean(vals):+.2f}")
        for view in ("full", "partial"):
            vals = [partial_spearman(c[t], c["disp"], c["pen"]) for c in data[view]]
            cells.append(f"{np.nanmean(vals):+.2f}")
        print(f"| {t} | " + " | ".join(cells) + " |")
    rng = np.random.default_rng(0)
    print(f"\nBest {args.keep} per cloud: penetration cm^3 / displacement cm / Q")
    for view in ("full", "partial"):
        cl = data[view]
        rows = {"current score (as stored)": lambda c: c["stored_score"],
                "score now (QualityWeights in the code)": lambda c: c["score"],
                "true Q (oracle)": lambda c: -(Q_WEIGHTS[0] * c["pen"] + Q_WEIGHTS[1] * c["disp"]),
                "random": lambda c: rng.random(len(c["pen"]))}
        for name, key in rows.items():
            p, d, q = kept_quality(cl, key, args.keep)
            print(f"  {view:7s} {name:40s} {p:6.2f} {d:5.2f} {q:5.2f}")
    if args.subsets:
        print(f"\nBest {args.keep} per cloud by the code's score among N candidates (N of the collected ones, "
              f"{SUBSET_DRAWS} random draws per cloud): penetration cm^3 / displacement cm / Q")
        for n in (int(x) for x in args.subsets.split(",")):
            cells = []
            for view in ("full", "partial"):
                drawn = [_subset(c, np.random.default_rng(1000 * r + i).permutation(len(c["pen"]))[:n])
                         for r in range(SUBSET_DRAWS) for i, c in enumerate(data[view])]
                p, d, q = kept_quality(drawn, lambda c: c["score"], args.keep)
                cells.append(f"{view} {p:5.2f} / {d:4.2f} / {q:4.2f}")
            print(f"  N {n:3d}: " + "   ".join(cells))
    if args.fit:
        extra = []
        for d in args.extra:
            more = load(d, gen, variants, gravity=not args.no_gravity)
            extra += more["full"] + more["partial"]
            print(f"\n--extra {d}: {len(more['full'])} objects' candidates join every fit (not scored)")
        fit(data, args, extra)


SUBSET_DRAWS = 4


def _subset(c: dict, idx: np.ndarray) -> dict:
    """One cloud's record restricted to the candidates ``idx`` (candidates are i.i.d. samples, so any
    subset of N is a draw of N)."""
    n = len(c["pen"])
    return {k: (v[idx] if isinstance(v, np.ndarray) and v.shape[:1] == (n,) else v) for k, v in c.items()}


def _kept_with(data: dict[str, list[dict]], fall: dict[int, np.ndarray], keep: int,
               pen_est: dict[int, np.ndarray] | None = None, disp_est: dict[int, np.ndarray] | None = None,
               **weights: float) -> list[str]:
    """Kept quality per view when each cloud's candidates are ranked by ``combine_terms`` with the
    code's ``QualityWeights`` changed by ``weights``, the stability term replaced by ``fall`` and,
    given ``pen_est``, the learnt penetration estimate by it (else the cloud's term counts); given
    ``disp_est`` too, the learnt displacement estimate (the score is then the estimated Q)."""
    import torch

    from dataclasses import replace

    from dvqvae_model.pipeline.grasp_quality import QualityWeights, combine_terms

    qw = replace(QualityWeights(), **weights)
    cells = []
    for view in ("full", "partial"):
        def key(c: dict) -> np.ndarray:
            t = {k: torch.from_numpy(np.asarray(c[k], np.float32)) for k in
                 ("penetration", "contact", "closure", "digits", "one_sidedness")}
            t["stability"] = torch.from_numpy(fall[id(c)].astype(np.float32))
            if pen_est is not None:
                t["penetration_est"] = torch.from_numpy(pen_est[id(c)].astype(np.float32))
            if disp_est is not None:
                t["displacement_est"] = torch.from_numpy(disp_est[id(c)].astype(np.float32))
            return combine_terms(torch.from_numpy(np.asarray(c["prior"], np.float32)), t, qw).numpy()
        p, d, q = kept_quality(data[view], key, keep)
        touching = np.mean([np.asarray(c["touches"])[np.argsort(-key(c), kind="stable")[:keep]] for c in data[view]])
        cells.append(f"{view} {p:5.2f} / {d:4.2f} / {q:4.2f} ({100 * touching:.1f} %)")
    return cells


def _sweep(data: dict[str, list[dict]], fall: dict[int, np.ndarray], args, label: str,
           pen_est: dict[int, np.ndarray] | None = None) -> None:
    """One ``_kept_with`` row per value of each ``--sweep`` field (one field changed at a time)."""
    for spec in (s for s in args.sweep.split(";") if s):
        field_name, values = spec.split("=")
        for value in values.split(","):
            cells = _kept_with(data, fall, args.keep, pen_est, **{field_name: float(value)})
            print(f"    {label}{field_name}={value}: " + "   ".join(cells))


FOLDS = 5


def _held_out(fit_clouds: list[dict], eval_clouds: list[dict], fold: dict[str, int], fit_predict
              ) -> dict[int, np.ndarray]:
    """Cross-validation over objects: for each fold, ``fit_predict(training clouds)`` returns a
    predictor that is applied to that fold's ``eval_clouds`` -> {id(cloud): predictions}. Clouds of
    objects without a fold (``--extra`` data of other objects) are always in training."""
    held: dict[int, np.ndarray] = {}
    for k in range(FOLDS):
        predict = fit_predict([c for c in fit_clouds if fold.get(c["object"], -1) != k])
        for c in eval_clouds:
            if fold[c["object"]] == k:
                held[id(c)] = predict(c)
    return held


def fit(data: dict[str, list[dict]], args, extra: list[dict] | None = None) -> None:
    """Fit the fall model and the ranking's weights; 5-fold cross-validation over objects. ``extra``
    clouds (other collections: another model's candidates, other objects) join every fit but are
    not scored."""
    names = [n for n in args.features.split(",") if n]
    objects = sorted({c["object"] for c in data["full"]})
    fold = {o: i % FOLDS for i, o in enumerate(objects)}
    clouds = data["full"] + data["partial"]
    fit_clouds = clouds + list(extra or [])

    def logistic(train: list[dict]):
        model = fit_fall(train, names, args.fall_cm)
        return lambda c: fall_probability(c, names, model)

    held_out = _held_out(fit_clouds, clouds, fold, logistic)
    print(f"\nFall model: P(displacement > {args.fall_cm:g} cm) from {names}; 5-fold cross-validation over objects")
    for view in ("full", "partial"):
        sp = np.nanmean([spearman(held_out[id(c)], c["disp"]) for c in data[view]])
        spp = np.nanmean([spearman(held_out[id(c)], c["pen"]) for c in data[view]])
        print(f"  {view}: Spearman of the held-out fall probability vs displacement {sp:+.2f}, vs penetration {spp:+.2f}")
    print(f"  best {args.keep} per cloud by the code's score (combine_terms) with this held-out fall probability as "
          f"its stability term, one setting changed at a time: pen. cm^3 / disp. cm / Q (contact %)")
    print("    code's weights: " + "   ".join(_kept_with(data, held_out, args.keep)))
    _sweep(data, held_out, args, "")
    if args.gbt:
        _compare_trees(data, clouds, fit_clouds, fold, args)
    mean, std, coef, icpt = fit_fall(fit_clouds, names, args.fall_cm)
    print("  fitted on all validation candidates (paste into StabilityModel):")
    print(f"    features={tuple(names)!r},\n    mean={tuple(round(float(x), 5) for x in mean)!r},\n"
          f"    std={tuple(round(float(x), 5) for x in std)!r},\n    coef={tuple(round(float(x), 5) for x in coef)!r},\n"
          f"    intercept={icpt:.5f}, fall_cm={args.fall_cm:g}")


# which way each tree input moves the fall probability (physics): +1 more likely to fall, -1 less, 0 free
MONOTONE = {"coverage": -1, "cone_eps": -1, "balance": -1, "opposition": -1, "opposition_any": -1, "centroid": 1,
            "span": -1, "epsilon": -1, "area": -1, "parts": -1, "fingers": -1, "thumb": -1, "g_resist": 1,
            "g_support": -1, "penetration": 0, "contact": 1, "closure": 1, "digits": 1, "one_sidedness": 0}


def _pen_inputs() -> tuple[str, ...]:
    """What the penetration trees see: the fall trees' inputs and the view-shadow features."""
    from dvqvae_model.pipeline.stability import TREE_INPUTS
    from dvqvae_model.pipeline.view_shadow import SHADOW_NAMES

    return TREE_INPUTS + SHADOW_NAMES


def _tree_inputs(c: dict, names: tuple[str, ...] | None = None) -> np.ndarray:
    from dvqvae_model.pipeline.stability import TREE_INPUTS

    return np.stack([np.broadcast_to(np.asarray(c[f"f_{n}"] if f"f_{n}" in c else c[n], np.float64), c["pen"].shape)
                     for n in (names or TREE_INPUTS)], 1)


def _fit_trees(clouds: list[dict], fall_cm: float):
    """Gradient-boosted trees of "the object falls" over ``TREE_INPUTS`` (100 trees of 8 leaves, monotone)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from dvqvae_model.pipeline.stability import TREE_INPUTS

    m = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.05, max_leaf_nodes=8, min_samples_leaf=40,
                                       monotonic_cst=[MONOTONE[n] for n in TREE_INPUTS], random_state=0)
    return m.fit(np.concatenate([_tree_inputs(c) for c in clouds]),
                 np.concatenate([c["disp"] > fall_cm for c in clouds]))


def _fit_pen_trees(clouds: list[dict]):
    """Gradient-boosted trees of log1p(measured penetration, cm^3) - log1p(the cloud's term) over
    ``_pen_inputs`` (150 trees of 8 leaves; non-decreasing in the hand behind the visible surface): a
    factor on the cloud's term, so that hands deeper than any fitted on still rank by how deep the
    cloud says they are."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    names = _pen_inputs()
    up = {"behind_1cm", "behind_2cm", "behind_thick", "behind_area"}
    m = HistGradientBoostingRegressor(max_iter=150, learning_rate=0.05, max_leaf_nodes=8, min_samples_leaf=40,
                                      monotonic_cst=[1 if n in up else 0 for n in names], random_state=0)
    return m.fit(np.concatenate([_tree_inputs(c, names) for c in clouds]),
                 np.concatenate([np.log1p(np.maximum(c["pen"], 0.0))
                                 - np.log1p(np.maximum(np.asarray(c["penetration"], np.float64), 0.0)) for c in clouds]))


def _fit_disp_trees(clouds: list[dict]):
    """Gradient-boosted trees of log1p(simulated displacement, cm) over ``_pen_inputs`` (300 trees of
    16 leaves: on 206 validation objects the kept grasps' displacement stopped improving there)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    m = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, max_leaf_nodes=16, min_samples_leaf=40,
                                      random_state=0)
    return m.fit(np.concatenate([_tree_inputs(c, _pen_inputs()) for c in clouds]),
                 np.concatenate([np.log1p(np.maximum(c["disp"], 0.0)) for c in clouds]))


def _disp_trees(m):
    """The fitted displacement trees as the package evaluates them."""
    from dvqvae_model.pipeline.boosted_trees import trees_from_sklearn

    return trees_from_sklearn(m, _pen_inputs(), "displacement cm (simulator check)")


def _pen_trees(m):
    """The fitted penetration trees as the package evaluates them (a factor on the cloud's term)."""
    from dvqvae_model.pipeline.boosted_trees import trees_from_sklearn

    return trees_from_sklearn(m, _pen_inputs(), "penetration volume cm^3 (1 mm lattice)", offset="penetration")


def _save_regression_trees(clouds: list[dict], path: str, name: str, fit_model, export) -> None:
    """Fit regression trees on every candidate, check the export against scikit-learn, save them."""
    m = fit_model(clouds)
    trees = export(m)
    x = np.concatenate([_tree_inputs(c, trees.columns) for c in clouds])
    gap = float(np.abs(trees.raw(x) - m.predict(x)).max())
    if gap > 1e-5:
        raise SystemExit(f"the exported {name} trees differ from scikit-learn's by {gap:g}")
    print(f"  {name} trees fitted on all candidates saved to {trees.save(path)} (max |raw - sklearn| {gap:.1e})")


def _compare_trees(data: dict[str, list[dict]], clouds: list[dict], fit_clouds: list[dict], fold: dict[str, int],
                   args) -> None:
    """The fall, penetration and displacement trees (``dvqvae_model.pipeline.boosted_trees``) cross-validated
    like the logistic model and used in the code's score; ``--save-*`` fits them on every candidate of
    ``fit_clouds`` (``clouds`` and any ``--extra``) and saves them."""
    from dvqvae_model.pipeline.boosted_trees import trees_from_sklearn
    from dvqvae_model.pipeline.stability import TREE_INPUTS

    def fall_trees(train: list[dict]):
        m = _fit_trees(train, args.fall_cm)
        return lambda c: m.predict_proba(_tree_inputs(c))[:, 1]

    def regression(fit_model, export):
        def fit_predict(train: list[dict]):
            trees = export(fit_model(train))
            return lambda c: trees.predict(_tree_inputs(c, trees.columns))
        return fit_predict

    held = _held_out(fit_clouds, clouds, fold, fall_trees)
    sp = [np.nanmean([spearman(held[id(c)], c["disp"]) for c in data[v]]) for v in ("full", "partial")]
    print(f"  fall trees on {len(TREE_INPUTS)} features and terms (held out): Spearman vs displacement "
          f"full {sp[0]:+.2f}, partial {sp[1]:+.2f}")
    for wt in (30.0, 40.0, 60.0):
        print(f"    trees, stability={wt:g}: " + "   ".join(_kept_with(data, held, args.keep, stability=wt)))
    _sweep(data, held, args, "trees, ")
    pen = _held_out(fit_clouds, clouds, fold, regression(_fit_pen_trees, _pen_trees))
    sp = [[np.nanmean([spearman(x, c["pen"]) for c in data[v] for x in (pen[id(c)] if learnt else c["penetration"],)])
           for v in ("full", "partial")] for learnt in (False, True)]
    print(f"  penetration trees on {len(_pen_inputs())} inputs (held out): Spearman vs measured penetration "
          f"full {sp[0][0]:+.2f} -> {sp[1][0]:+.2f}, partial {sp[0][1]:+.2f} -> {sp[1][1]:+.2f} (cloud term -> trees)")
    for wt in (3.0, 4.0, 6.0):
        print(f"    fall trees + penetration trees, penetration_estimate={wt:g}: "
              + "   ".join(_kept_with(data, held, args.keep, pen, penetration_estimate=wt)))
    _sweep(data, held, args, "fall + penetration trees, ", pen)
    disp = _held_out(fit_clouds, clouds, fold, regression(_fit_disp_trees, _disp_trees))
    sd = [[np.nanmean([spearman(est[id(c)], c["disp"]) for c in data[v]]) for v in ("full", "partial")]
          for est in (disp, held)]
    print(f"  displacement trees on {len(_pen_inputs())} inputs (held out): Spearman vs measured displacement "
          f"full {sd[0][0]:+.2f}, partial {sd[0][1]:+.2f} (the fall trees' probability: {sd[1][0]:+.2f}, {sd[1][1]:+.2f})")
    print("    estimated Q (penetration + displacement trees, the score with both): "
          + "   ".join(_kept_with(data, held, args.keep, pen, disp)))
    for path, name, fit_model, export in ((args.save_disp_trees, "displacement", _fit_disp_trees, _disp_trees),
                                          (args.save_pen_trees, "penetration", _fit_pen_trees, _pen_trees)):
        if path:
            _save_regression_trees(fit_clouds, path, name, fit_model, export)
    if args.save_trees:
        m = _fit_trees(fit_clouds, args.fall_cm)
        trees = trees_from_sklearn(m, TREE_INPUTS, f"displacement > {args.fall_cm:g} cm")
        x = np.concatenate([_tree_inputs(c) for c in fit_clouds])
        gap = float(np.abs(trees.predict(x) - m.predict_proba(x)[:, 1]).max())
        if gap > 1e-5:
            raise SystemExit(f"the exported trees differ from scikit-learn's by {gap:g}")
        print(f"  trees fitted on all candidates saved to {trees.save(args.save_trees)} (max |p - sklearn| {gap:.1e})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("collect", "analyse"))
    ap.add_argument("--data", default=str(ROOT / "data" / "grasps"))
    ap.add_argument("--split", default="val")
    ap.add_argument("--ids-file", default="", help="choose among these object ids only (one per line)")
    ap.add_argument("--max-objects", type=int, default=40)
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--keep", type=int, default=8)
    ap.add_argument("--pitch-mm", type=float, default=1.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fit", action="store_true")
    ap.add_argument("--no-gravity", action="store_true", help="score as a caller that does not know gravity")
    ap.add_argument("--gbt", action="store_true", help="with --fit: also cross-validate the fall trees")
    ap.add_argument("--save-trees", default="", help="with --gbt: fit the trees on every candidate and save them here "
                    "(dvqvae_model/assets/fall_trees.json is the bundled file)")
    ap.add_argument("--save-pen-trees", default="", help="with --gbt: fit the penetration trees on every candidate "
                    "and save them here (dvqvae_model/assets/penetration_trees.json is the bundled file)")
    ap.add_argument("--save-disp-trees", default="", help="with --gbt: fit the displacement trees on every candidate "
                    "and save them here (dvqvae_model/assets/displacement_trees.json is the bundled file)")
    ap.add_argument("--extra", action="append", default=[], metavar="DIR",
                    help="with --fit: other collect directories (e.g. another model's candidates) whose candidates "
                         "join every fit and the saved trees; the tables score --out's only")
    ap.add_argument("--subsets", default="", help="e.g. 16,32,64: the kept quality with N of the collected candidates")
    ap.add_argument("--variants", default="", help="feature settings to try too, e.g. 'mu=0.5;max_depth_mm=3'")
    ap.add_argument("--features", default="cone_eps,balance,span")
    ap.add_argument("--fall-cm", type=float, default=2.0, help="the fall model's threshold of displacement")
    ap.add_argument("--sweep", default="stability=10,20,30,40;stability_max_penetration=3,5,8;"
                    "one_sided_penetration_scale=1,2,4",
                    help="QualityWeights fields to vary one at a time with --fit: 'field=v1,v2;field=...'")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    collect(args) if args.mode == "collect" else analyse(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
