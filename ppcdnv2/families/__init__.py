"""Model families, one package each; importing a package registers its family (``ppcdnv2.registry``).

Adding a family: write ``ppcdnv2/families/<name>/`` and add its import here.
"""
from . import condensenet  # noqa: F401
from . import rexnet  # noqa: F401
from . import gfnet  # noqa: F401
