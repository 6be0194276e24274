"""Training: ReID losses, optimisers / schedules, the epoch loop and the three entry points (docs/contracts.md,
Training; ../shared/SPEC.md §4–5)."""

from oskt.train.api import AuxLoss, finetune_student, refine_chain, train_teacher
from oskt.train.distill import OFALoss, RSDLoss
from oskt.train.kd import KDPPLoss, teacher_class_centres
from oskt.train.losses import CenterLoss, ReIDLoss, cross_entropy_ls, triplet_loss
from oskt.train.optim import build_optimizer, build_schedule
from oskt.train.phase import TrainResult

__all__ = [
    "AuxLoss",
    "CenterLoss",
    "KDPPLoss",
    "OFALoss",
    "RSDLoss",
    "ReIDLoss",
    "TrainResult",
    "build_optimizer",
    "build_schedule",
    "cross_entropy_ls",
    "finetune_student",
    "refine_chain",
    "teacher_class_centres",
    "train_teacher",
    "triplet_loss",
]
