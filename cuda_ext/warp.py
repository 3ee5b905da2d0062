"""Point warp by scattered control points: every point moves back by a Gaussian-weighted, faded mean of the control
points' displacements (csrc/warp.h). The head field's landmark warp (nerf_talk/fields/warp.py) is built on it.

`warp_points` does it in one call. A caller that moves many batches of points by the same control points (a frame's
samples, chunk by chunk) prepares them once (`WarpControls.prepare`) and applies them to each batch (`apply`): the
checks and layout changes cost ~0.15 ms a call, as much as the kernel spends on a thousand points."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _backend, _torch_impl


@dataclass(frozen=True)
class WarpControls:
    """Control sets ready for one backend, device and dtype. Build with `prepare`."""

    ctrl: torch.Tensor  # [U, P, 3] control points where they are (moved)
    disp: torch.Tensor  # [U, P, 3] their displacements
    sides: torch.Tensor | None  # [P] (two-sided) or None
    sigma: float
    reach_z: float
    fade: float
    switch_width: float
    stretch: bool
    guides: torch.Tensor | None  # [P] bool or None (all)
    box: torch.Tensor | None  # [6]
    backend: str  # resolved: "cpu", "cuda" or "torch"
    kernel_args: tuple  # what the compiled kernel takes besides x and rows (empty on "torch")

    @staticmethod
    def prepare(
        ctrl: torch.Tensor,  # [U, P, 3] control points where they are (moved)
        disp: torch.Tensor,  # [U, P, 3] their displacements
        sigma: float,
        sides: torch.Tensor | None = None,  # [P] int: 1 upper, 0 lower, 2 both (two-sided warp); None: one-sided
        reach_z: float = 1.0,
        fade: float = 0.0,
        switch_width: float = 1.0,
        box: torch.Tensor | None = None,  # [6] lo, hi: points outside are returned unchanged
        backend: str | None = None,
        dtype: torch.dtype = torch.float32,  # of the points to be moved
        stretch: bool = False,  # two-sided: blend across the gap between the sides instead of switching at its middle
        guides: torch.Tensor | None = None,  # [P] bool: the points that give their side's height (None: all)
    ) -> "WarpControls":
        if ctrl.dim() != 3 or ctrl.shape[2] != 3 or ctrl.shape[0] < 1 or disp.shape != ctrl.shape:
            raise ValueError(f"ctrl and disp must have one shape [U >= 1, P, 3], got {list(ctrl.shape)} and "
                             f"{list(disp.shape)}")
        if sides is not None and sides.shape != (ctrl.shape[1],):
            raise ValueError(f"sides must have shape [{ctrl.shape[1]}], got {list(sides.shape)}")
        if guides is not None:
            if sides is None or guides.shape != (ctrl.shape[1],):
                raise ValueError(f"guides need sides and shape [{ctrl.shape[1]}], got {list(guides.shape)}")
            # A side without a guide has no height for the blend to run to (the kernels would read an infinite one).
            for side, name in ((1, "upper"), (0, "lower")):
                if not bool((guides.to(sides.device) & ((sides == side) | (sides == 2))).any()):
                    raise ValueError(f"the {name} side has no guide: mark at least one of its points in guides")
        name = _backend.resolve(backend, ctrl.device)
        args: tuple = ()
        with torch.no_grad():
            if name != "torch":
                kd = torch.float32 if name == "cuda" else dtype
                # The kernels take control sets coordinate-major ([U, 3, P]: the CPU loop vectorises over the points)
                # and the sides as two membership masks (upper, lower): 1 a member, 2 one that gives no height.
                masks = (torch.empty(0, dtype=kd, device=ctrl.device) if sides is None else
                         torch.stack([(sides == 1) | (sides == 2), (sides == 0) | (sides == 2)]).to(kd))
                if guides is not None:
                    masks = masks * torch.where(guides.to(ctrl.device), 1.0, 2.0).to(kd)
                args = (ctrl.to(kd).transpose(1, 2).contiguous(), disp.to(kd).transpose(1, 2).contiguous(),
                        masks.contiguous(), float(sigma), float(reach_z), float(fade), float(switch_width),
                        bool(stretch), [] if box is None else [float(v) for v in box.tolist()])
        return WarpControls(ctrl, disp, sides, float(sigma), float(reach_z), float(fade), float(switch_width),
                            bool(stretch), guides, box, name, args)

    @property
    def n_sets(self) -> int:
        return self.ctrl.shape[0]

    def apply(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:  # [N, 3]: x - D(x)
        """x [N, 3] moved; rows [N] int: the control set of each point (None: set 0 for all, U must be 1)."""
        if x.dim() != 2 or x.shape[1] != 3:
            raise ValueError(f"x must have shape [N, 3], got {list(x.shape)}")
        if x.device != self.ctrl.device:
            raise ValueError(f"x is on {x.device} but the control points on {self.ctrl.device}")
        if rows is None:
            if self.n_sets != 1 and x.shape[0]:
                raise ValueError(f"rows are needed to choose among {self.n_sets} control sets")
        else:
            if rows.shape != (x.shape[0],):
                raise ValueError(f"rows must have shape [{x.shape[0]}], got {list(rows.shape)}")
            if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= self.n_sets):
                raise ValueError(f"rows must lie in [0, {self.n_sets}), got [{int(rows.min())}, {int(rows.max())}]")
        with torch.no_grad():
            if self.backend == "torch":
                return _torch_impl.warp_points(x, self.ctrl.to(x.dtype), self.disp.to(x.dtype), self.sigma, rows,
                                               self.sides, self.reach_z, self.fade, self.switch_width, self.box,
                                               self.stretch, self.guides)
            kd = self.kernel_args[0].dtype
            if self.backend == "cpu" and kd != x.dtype:
                raise ValueError(f"these controls were prepared for {kd} points, got {x.dtype}")
            out = _backend.module_for(self.backend).warp_points(
                x.to(kd).contiguous(), self.kernel_args[0], self.kernel_args[1],
                torch.empty(0, dtype=torch.long, device=x.device) if rows is None else rows.long().contiguous(),
                *self.kernel_args[2:])
        return out.to(x.dtype)


def warp_points(
    x: torch.Tensor,  # [N, 3]
    ctrl: torch.Tensor,  # [U, P, 3] control points where they are (moved)
    disp: torch.Tensor,  # [U, P, 3] their displacements
    sigma: float,
    rows: torch.Tensor | None = None,  # [N] int: the control set of each point; None: set 0 for all (U must be 1)
    sides: torch.Tensor | None = None,  # [P] int: 1 upper, 0 lower, 2 both (two-sided warp); None: one-sided
    reach_z: float = 1.0,
    fade: float = 0.0,
    switch_width: float = 1.0,
    box: torch.Tensor | None = None,  # [6] lo, hi: points outside are returned unchanged
    backend: str | None = None,
    stretch: bool = False,
    guides: torch.Tensor | None = None,  # [P] bool: the points that give their side's height (None: all)
) -> torch.Tensor:  # [N, 3]: x - D(x)
    """x - D(x), D(x) = sum_p w_p d_p / (sum_p w_p + fade), w_p = exp(-|S(x - c_p)|^2 / (2 sigma^2)) with S scaling z
    by 1 / reach_z. Two-sided (`sides`): the upper (1) and lower (0) points, corners (2) in both, give two
    displacements, and a point follows the upper one when it lies above (smaller y than) the midpoint of the two sides'
    points nearest to it in (x, y), switching over `switch_width`; with `stretch`, blending linearly from the upper
    point's height to the lower's (over `switch_width` at least). Only the `guides` give a side's height (all points
    by default). No gradients (the warp follows given data)."""
    controls = WarpControls.prepare(ctrl.to(x.device), disp.to(x.device), sigma, sides, reach_z, fade, switch_width,
                                    box, backend, x.dtype, stretch, guides)
    return controls.apply(x, rows)
