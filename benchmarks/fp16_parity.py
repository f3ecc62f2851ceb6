"""How far fp16 (explicit mixed precision, the TensorRT --fp16 graph) moves the bundled model's grasps.

    python benchmarks/fp16_parity.py [--quick] [--seeds 6] [--grasps 64] [--json out.json]

Runs the module ``dvqvae_model.runtime.converters.export_module(..., fp16=True)`` gives TensorRT (the
encoders, prior and decoders in half behind casts; hand layer and scorer fp32) with PyTorch's CPU fp16
kernels, against the fp32 eager graph, on the same probe clouds and noise. Reports, per seed and in
total: the geometry error (max vertex distance) on the grasps that sampled eager's tokens, the token
flips (grasps whose tokens differ), eager's margin at each flip (a near-tie when small) and how far the
flipped hands are from eager's, and the largest logit difference of the prior under teacher forcing.
These numbers set ``FP16_TOLERANCE_M`` and ``FP16_TOKEN_TIE_MARGIN`` (dvqvae_model/runtime/artifacts.py).
TensorRT's fp16 kernels (fp32 accumulation) are not these kernels: the GPU build re-checks its own engine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from dvqvae_model.checkpoint import DEFAULT_MODEL_DIR  # noqa: E402
from dvqvae_model.pipeline.generator import GraspGenerator  # noqa: E402
from dvqvae_model.runtime.artifacts import FP16_TOKEN_TIE_MARGIN, FP16_TOLERANCE_M  # noqa: E402
from dvqvae_model.runtime.converters import export_module  # noqa: E402
from dvqvae_model.runtime.parity import probe_points  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=6, help="probe clouds / noise draws (default 6)")
    ap.add_argument("--grasps", type=int, default=64, help="grasps per seed (default 64)")
    ap.add_argument("--quick", action="store_true", help="2 seeds x 16 grasps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()
    seeds, k = (2, 16) if args.quick else (args.seeds, args.grasps)
    torch.set_num_threads(args.threads)
    gen = GraspGenerator.from_checkpoint(DEFAULT_MODEL_DIR)
    graph = gen.graph(None)
    ref, _ = export_module(graph, "cpu")
    half, plan = export_module(graph, "cpu", fp16=True)
    temp = torch.tensor(1.0)
    rows, flips, worst, worst_logit, total = [], [], 0.0, 0.0, 0
    t0 = time.perf_counter()
    for seed in range(seeds):
        points, noise = probe_points(gen.num_points, seed=seed), gen.make_noise(k, seed).cpu()
        with torch.no_grad():
            a, b = ref(points, noise, temp), half(points, noise, temp)
            _, margins = ref.sampler.token_margins(points, noise, temp)
            obj, _, _ = ref.sampler._object_features(points, k)
            seq = torch.cat([obj[:, None], a[4]], dim=1)  # teacher-forced on eager's tokens
            la, lb = ref.sampler.prior.logits(seq), half.sampler.prior.logits(seq)
        valid = ref.sampler.prior.valid.expand_as(la)
        worst_logit = max(worst_logit, float((la - lb).abs()[valid].max()))
        same = (a[4] == b[4]).all(dim=1)
        err = (a[1] - b[1]).abs().amax(dim=(1, 2))
        seed_worst = float(err[same].max()) if bool(same.any()) else float("nan")
        worst = max(worst, seed_worst)
        total += k
        for g in (~same).nonzero().flatten().tolist():
            step = int((a[4][g] != b[4][g]).nonzero()[0, 0])
            flips.append({"seed": seed, "grasp": g, "step": step, "margin": float(margins[g, step]),
                          "hand_distance_m": float(err[g])})
        rows.append({"seed": seed, "max_vertex_error_m": seed_worst, "flips": int((~same).sum())})
        print(f"seed {seed}: max vertex error {1e3 * seed_worst:.3f} mm on eager's tokens, "
              f"{int((~same).sum())} token flip(s)")
    result = {"model": str(DEFAULT_MODEL_DIR), "grasps": total, "fp16_plan": plan,
              "max_vertex_error_m": worst, "token_flips": flips, "max_logit_error": worst_logit,
              "tolerance_m": FP16_TOLERANCE_M, "tie_margin": FP16_TOKEN_TIE_MARGIN, "per_seed": rows,
              "seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__}
    print(f"\n{total} grasps: geometry error {1e3 * worst:.3f} mm (bound {1e3 * FP16_TOLERANCE_M:g} mm); "
          f"{len(flips)} token flip(s) at eager margins {[round(f['margin'], 4) for f in flips]} "
          f"(tie margin {FP16_TOKEN_TIE_MARGIN:g}), flipped hands {[round(1e3 * f['hand_distance_m'], 1) for f in flips]} "
          f"mm away; prior logits differ by up to {worst_logit:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
