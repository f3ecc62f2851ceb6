"""Size presets for DVQ-VAE, its prior and the GraspCVAE baseline.

* ``paper``   widths of the released model (method notes Sec. 2/4): PointNets 64-128-1024 with STN and
              batch norm, part MLP 1024-512-256, hand codebooks 128 x 256, object codebook 128 x 1024,
              posture decoder 1024-256, position decoder 1024-128; GraspCVAE at GraspTTA's sizes.
* ``compact`` (default) the on-robot size: PointNets 64-128-256 without STN or batch norm (inputs in
              decimetres instead; no train/eval statistics gap, nothing to fold at export), 64-d hand
              codes, a 256-d object code, 1024 object points, hand parts thinned to <= 128 vertices and
              the position PointNet on a 256-vertex farthest-point subset of the hand.
              DVQ-VAE + prior stay well under 6 M parameters; K=16 decoding takes ~10-15 ms on one core.
"""
from __future__ import annotations

from dvqvae_model.nets.cvae import CVAEConfig
from dvqvae_model.nets.dvqvae import DVQVAEConfig
from dvqvae_model.nets.prior import PriorConfig

PRESETS = ("paper", "compact")
DEFAULT_PRESET = "compact"
COMPACT_MAX_PARAMETERS = 6_000_000  # DVQ-VAE + prior, compact preset


def dvqvae_config(name: str = DEFAULT_PRESET, **overrides: object) -> DVQVAEConfig:
    """DVQ-VAE config of a preset; keyword overrides replace single fields (e.g. ``variant=``)."""
    if name == "paper":
        cfg = DVQVAEConfig()
    elif name == "compact":
        cfg = DVQVAEConfig(
            codebook_size=128,
            object_codebook_size=128,
            hand_code_dim=64,
            part_pointnet_widths=(64, 128, 256),
            part_mlp_widths=(128,),
            object_pointnet_widths=(64, 128, 256),
            position_pointnet_widths=(64, 128, 256),
            posture_decoder_widths=(512, 256),
            position_decoder_widths=(256, 128),
            gate_hidden=(256, 512),
            transform_hidden=(256, 512),
            use_stn=False,
            norm="none",
            position_num_vertices=256,
            part_max_vertices=128,
            num_points=1024,
        )
    else:
        raise ValueError(f"unknown preset {name!r}; expected one of {PRESETS}")
    if overrides:
        data = cfg.to_dict()
        data.update(overrides)
        cfg = DVQVAEConfig.from_dict(data)
    return cfg


def cvae_config(name: str = DEFAULT_PRESET, **overrides: object) -> CVAEConfig:
    """GraspCVAE config of a preset."""
    if name == "paper":
        cfg = CVAEConfig()
    elif name == "compact":
        cfg = CVAEConfig(object_pointnet_widths=(64, 128, 256), hand_pointnet_widths=(64, 128, 256),
                         encoder_widths=(256, 128), latent_dim=64, decoder_widths=(256, 128),
                         use_stn=False, norm="none")
    else:
        raise ValueError(f"unknown preset {name!r}; expected one of {PRESETS}")
    if overrides:
        data = cfg.to_dict()
        data.update(overrides)
        cfg = CVAEConfig.from_dict(data)
    return cfg


def prior_config(name: str, model_cfg: DVQVAEConfig) -> PriorConfig:
    """Prior config of a preset with the vocabulary sizes of ``model_cfg``'s tokens."""
    vocab = (model_cfg.object_codebook_size,) + (model_cfg.codebook_size,) * 6
    if name == "paper":
        return PriorConfig.paper(vocab_sizes=vocab)
    if name == "compact":
        return PriorConfig.compact(vocab_sizes=vocab)
    raise ValueError(f"unknown preset {name!r}; expected one of {PRESETS}")


def preset(name: str = DEFAULT_PRESET, variant: str = "full") -> tuple[DVQVAEConfig, PriorConfig, CVAEConfig]:
    """(DVQ-VAE config, prior config, GraspCVAE config) of a size preset."""
    model_cfg = dvqvae_config(name, variant=variant)
    return model_cfg, prior_config(name, model_cfg), cvae_config(name)
