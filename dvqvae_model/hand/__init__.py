"""The hand: a MANO-layout hand model (differentiable layer, anatomy metadata, safe pickle loading,
named poses, skeleton angles) and the ``dvqvae-hand`` command. Depends on nothing else here."""
from dvqvae_model.hand.hand_metadata import HandMetadata
from dvqvae_model.hand.hand_model import HandModel, HandOutput, load_hand_model, resolve_hand_path
from dvqvae_model.hand.hand_poses import NAMED_POSES, PoseSpec, named_pose, named_pose_params
from dvqvae_model.hand.mano_pickle import MANOFormatError, UnsafePickleError
from dvqvae_model.hand.skeleton import bend_angles

__all__ = [
    "HandMetadata", "HandModel", "HandOutput", "MANOFormatError", "NAMED_POSES", "PoseSpec", "UnsafePickleError",
    "bend_angles", "load_hand_model", "named_pose", "named_pose_params", "resolve_hand_path",
]
