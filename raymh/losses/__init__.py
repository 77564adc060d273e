"""Losses of the method: supervised CE, the streamed Directional Contrastive Loss and the Mix Loss."""

from raymh.losses.ce import cross_entropy
from raymh.losses.crops import dc_loss_from_crops, overlap_anchors
from raymh.losses.dcloss import direction_masks, directional_contrastive_loss
from raymh.losses.mix import mix_loss

__all__ = [
    "cross_entropy",
    "dc_loss_from_crops",
    "direction_masks",
    "directional_contrastive_loss",
    "mix_loss",
    "overlap_anchors",
]
