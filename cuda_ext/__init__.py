"""nerf_talk's kernels: hash-grid encoding, occupancy-grid ray marching, volume compositing, the point warp, the
feathered box weight and, for CPU inference, small fused MLPs.

Written once as host/device templates in ``csrc/*.h``, compiled for the CPU (C++ with OpenMP) and for CUDA, wrapped
in autograd functions, with a pure-PyTorch reference (``_torch_impl``). Layering and build: docs/cuda_ext.md.

Backends (``backend=`` argument, or the process default from ``set_backend`` / ``NERF_TALK_BACKEND``):
``auto`` (compiled kernels for the tensors' device, the reference if they cannot be built), ``cuda``, ``cpu``,
``torch``.
"""

from ._backend import BACKENDS, BuildError, available, build_error, find_cuda_home, get_backend, set_backend
from .box import box_weight, unit_box_density
from .composite import composite, composite_colours, composite_weights, packed_info_from_ray_indices
from .hashgrid import HashGrid, HashGridConfig, hash_encode
from .mlp import linear_layers, mlp_forward
from .occupancy import OccupancyGrid, RaySamples, march_rays, pack_bitfield, sample_positions
from .warp import WarpControls, warp_points

__all__ = [
    "BACKENDS",
    "BuildError",
    "HashGrid",
    "HashGridConfig",
    "OccupancyGrid",
    "RaySamples",
    "WarpControls",
    "available",
    "box_weight",
    "build_error",
    "composite",
    "composite_colours",
    "composite_weights",
    "find_cuda_home",
    "get_backend",
    "hash_encode",
    "linear_layers",
    "march_rays",
    "mlp_forward",
    "pack_bitfield",
    "packed_info_from_ray_indices",
    "sample_positions",
    "set_backend",
    "unit_box_density",
    "warp_points",
]
