"""PyTorch references of CondenseNetV2 and V1 with the official module layout (parity tests, ``--verify``).

Needs torch; nothing is imported until a name is used, so ``import ppcdnv2`` never loads torch.
"""
from importlib import import_module

_EXPORTS = {name: "condensenetv2"
            for name in ("build_reference", "set_progress", "condense_reference", "randomize_", "state_dict_numpy",
                         "paddle_twin", "ReferenceCondenseNetV2", "SFR_INDEX_MODES", "SMALL_CONFIG")}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
