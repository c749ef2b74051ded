"""tripletkit: FaceNet triplet loss with exact O(B^2) in-batch mining."""

from .curriculum import SCHEDULES, Curriculum, Schedule, default_curriculum
from .distances import DISTANCES, paired_distances, pairwise_distances
from .losses import (
    REDUCTIONS,
    TripletLoss,
    TripletStats,
    cross_triplet_loss,
    relevance_triplet_loss,
    triplet_loss,
)
from .mining import FALLBACKS, STRATEGIES, Relevance, Triplets, mine, release_workspace
from .sampling import PKSampler

__version__ = "0.1.0"

__all__ = [
    "DISTANCES",
    "FALLBACKS",
    "REDUCTIONS",
    "SCHEDULES",
    "STRATEGIES",
    "Curriculum",
    "PKSampler",
    "Relevance",
    "Schedule",
    "TripletLoss",
    "TripletStats",
    "Triplets",
    "__version__",
    "cross_triplet_loss",
    "default_curriculum",
    "mine",
    "paired_distances",
    "pairwise_distances",
    "relevance_triplet_loss",
    "release_workspace",
    "triplet_loss",
]
