from .common import HS, SELayer, Conv, batch_norm, channel_shuffle, channel_unshuffle, make_activation
from .learned import LGC, SFR, LEARNED_LAYERS, TrainConv, conv2d_train, stage_for_progress
from .condensed import CondenseLGC, CondenseSFR, dense_index_to_targets, targets_to_dense_index
from .condensed import CondenseLinear, condense_linear_index

__all__ = [
    "HS", "SELayer", "Conv", "batch_norm", "channel_shuffle", "channel_unshuffle", "make_activation",
    "LGC", "SFR", "LEARNED_LAYERS", "TrainConv", "conv2d_train", "stage_for_progress",
    "CondenseLGC", "CondenseSFR", "dense_index_to_targets", "targets_to_dense_index",
    "CondenseLinear", "condense_linear_index",
]
