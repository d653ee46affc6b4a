"""lambdaconv: convolutions whose per-tap operation is any function you write.

    import lambdaconv as lc
    layer = lc.Conv2d(3, 16, 3, padding=1, op=lambda x, A, B: A * (x - B))
    y = lc.conv2d(x, "-abs(x-W)", {"W": w}, padding=1)
    print(lc.explain("A*(x-B)"))
"""
from . import reductions, settings
from .functional import conv1d, conv2d, conv3d
from .nn import Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d
from .transpose import conv_transpose1d, conv_transpose2d, conv_transpose3d
from .explain import explain
from .plan import Plan
from .ir import PRESETS, REDUCES
from .geometry import PADDING_MODES

__version__ = "0.1.0"

__all__ = ["conv1d", "conv2d", "conv3d", "Conv1d", "Conv2d", "Conv3d", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "explain", "Plan", "PRESETS",
           "REDUCES", "PADDING_MODES", "reductions", "settings"]
