"""``ppcdnv2.gfnet``: GFNet's public names (model classes, budget tools, evaluation), importable as
``from ppcdnv2.gfnet import find_thresholds``; they live in ``ppcdnv2.families.gfnet``."""
from .families.gfnet import *  # noqa: F401,F403
from .families.gfnet import __all__  # noqa: F401
