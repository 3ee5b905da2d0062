"""Training data from a preprocessed dataset: per-frame arrays, the motion basis, and rays sampled from a few frames
per step. Decoded frames are cached on the CPU as uint8 (an LRU bounded by `cache_mb`) and only the sampled pixels go
to the training device, so a 5-minute 512^2 clip never needs all its frames in GPU memory (or in RAM)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import NamedTuple

import cv2
import numpy as np
import torch

from nerf_talk.config import DataConfig
from nerf_talk.errors import UserError
from nerf_talk.fields.warp import FaceWarp
from nerf_talk.motion.basis import PersonalMotionBasis
from nerf_talk.render.cameras import Intrinsics
from preprocess.dataset import Dataset, frame_name
from preprocess.face_motion import to_head_frame
from preprocess.mesh_topology import RIGID
from preprocess.labels import HEAD_LABELS, MOUTH_LABELS, Label

# The eye rays are drawn around the eye label, grown by this share of the image height (2 px at 128 px): a closed eye
# is parsed as skin except for a few pixels along the lash line, and the lids that cover it are what a blink changes.
EYE_REGION_GROW = 0.015


# The torso field is taught to reach this share of the image height (6 px at 256 px) up from the parsed neck and
# torso under the head: a CPU fit's head is part transparent along its lower edge, and a torso that stopped at the
# body's labels let the background plate show through there as a dark line along the jaw (reagan's renders,
# docs/BENCHMARKS.md).
BODY_UNDERLAP = 0.025


def label_table(labels) -> torch.Tensor:  # [256] bool: lookup table for "label in labels"
    t = torch.zeros(256, dtype=torch.bool)
    t[torch.tensor([int(v) for v in labels])] = True
    return t


HEAD_LUT, MOUTH_LUT = label_table(HEAD_LABELS), label_table(MOUTH_LABELS)
BODY_LUT = label_table((Label.NECK, Label.TORSO))


def dilate(mask: np.ndarray, grow: int) -> np.ndarray:  # [H, W] uint8 0/1 -> [H, W] uint8
    """`mask` grown by `grow` pixels in a square window (pixels outside the image count as empty)."""
    return cv2.dilate(mask, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)) if grow > 0 else mask


def eye_pixels(labels: torch.Tensor, grow: int) -> torch.Tensor:  # [H, W] uint8 -> [H*W] bool
    """The eye label dilated by `grow` pixels (a square window), flattened row-major."""
    eye = (labels == int(Label.EYES)).numpy().astype(np.uint8)
    return torch.from_numpy(dilate(eye, grow).reshape(-1) > 0)


def under_jaw_pixels(labels: torch.Tensor, grow: int) -> torch.Tensor:  # [H, W] uint8 -> [H, W] bool
    """Head pixels within `grow` pixels (a square window) of the neck or torso labels: where the torso layer runs on
    under the head's lower edge."""
    body = BODY_LUT[labels.long()].numpy().astype(np.uint8)
    return torch.from_numpy(dilate(body, grow) > 0) & HEAD_LUT[labels.long()]


class Frame(NamedTuple):
    """One training frame at the training size, as uint8/bool CPU tensors."""

    image: torch.Tensor  # [H, W, 3] uint8
    parsing: torch.Tensor  # [H, W] uint8 labels
    torso: torch.Tensor  # [H, W, 4] uint8 RGBA
    eye_region: torch.Tensor  # [H*W] bool: eye_pixels(parsing, grown by EYE_REGION_GROW)
    under_jaw: torch.Tensor  # [H, W] bool: under_jaw_pixels(parsing, grown by BODY_UNDERLAP)


class FrameStore:
    """Frame i's image, parsing labels, torso RGBA and the regions rays are drawn from, decoded once and kept on the
    CPU (LRU). (Dilating the labels with torch's max_pool2d at every draw was 22 % of a CPU-recipe training step;
    cv2.dilate, once per frame, costs 0.3 ms: docs/BENCHMARKS.md, "seventh session".)"""

    def __init__(self, ds: Dataset, size: tuple[int, int], cache_mb: int) -> None:
        self.ds, self.size = ds, size  # size: (height, width) after scaling
        h, w = size
        self.capacity = max(1, int(cache_mb * 2**20 // (h * w * 10)))  # 3 + 1 + 4 bytes + 2 masks per pixel
        self.eye_grow = max(1, round(EYE_REGION_GROW * h))
        self.jaw_grow = max(1, round(BODY_UNDERLAP * h))
        self._cache: OrderedDict[int, Frame] = OrderedDict()

    def _resize(self, img: np.ndarray, nearest: bool) -> np.ndarray:
        h, w = self.size
        if img.shape[:2] == (h, w):
            return img
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)

    def get(self, i: int) -> Frame:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        image = self._resize(self.ds.read_frame(i), False)
        parsing = torch.from_numpy(self._resize(self.ds.read_parsing(i), True))
        torso = self.ds.read_image(f"torso/{frame_name(i, 'png')}")
        if torso.ndim != 3 or torso.shape[2] != 4:
            raise UserError(f"{self.ds.root}/torso/{frame_name(i, 'png')} is not RGBA (shape {torso.shape})",
                            "run the torso step of preprocess again.")
        item = Frame(torch.from_numpy(image), parsing, torch.from_numpy(self._resize(torso, False)),
                     eye_pixels(parsing, self.eye_grow), under_jaw_pixels(parsing, self.jaw_grow))
        self._cache[i] = item
        if len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return item


@dataclass
class RayBatch:
    """Pixels of a few frames with their ground truth; everything on the training device."""

    frames: torch.Tensor  # [R] int64 dataset frame index
    rows: torch.Tensor  # [R] int64 row in the training list (for per-frame latents), -1 for non-training frames
    pixels: torch.Tensor  # [R, 2] int64 (x, y)
    rgb: torch.Tensor  # [R, 3] float in [0, 1]
    labels: torch.Tensor  # [R] uint8 parsing labels
    torso_rgba: torch.Tensor  # [R, 4] float in [0, 1] (straight alpha)
    under_jaw: torch.Tensor  # [R] bool: head pixels the torso layer runs on under (under_jaw_pixels)

    @staticmethod
    def cat(batches: list[RayBatch]) -> RayBatch:
        """The rays of several batches, in order."""
        return RayBatch(*(torch.cat([getattr(b, f.name) for b in batches]) for f in fields(RayBatch)))

    @property
    def head_mask(self) -> torch.Tensor:  # [R] bool
        return HEAD_LUT.to(self.labels.device)[self.labels.long()]

    @property
    def mouth_mask(self) -> torch.Tensor:  # [R] bool
        return MOUTH_LUT.to(self.labels.device)[self.labels.long()]


EDGE_BLINK = 0.5  # a frame's eyes count as closed from this blink value (the evaluation's blink threshold)
EDGE_OPENING_QUANTILE = 0.95  # the widest mouth openings: above this quantile of the training frames' openings


def edge_frames(train_frames: list[int], blink: np.ndarray, opening: np.ndarray) -> list[int]:
    """The training frames at the edge of the person's range, which uniform sampling leaves short of rays: eyes
    closed (blink >= EDGE_BLINK) or the mouth among its widest openings (EDGE_OPENING_QUANTILE). The warp moves lids
    and lips there by construction, but what it cannot make (the closed lid's skin, the open mouth's teeth and
    interior) is learnt from these frames alone."""
    frames = np.asarray(train_frames)
    wide = opening[frames] >= np.quantile(opening[frames], EDGE_OPENING_QUANTILE)
    return [int(i) for i in frames[(blink[frames] >= EDGE_BLINK) | wide]]


class TrainData:
    """Everything training reads from a dataset, at the configured scale."""

    def __init__(self, dataset_dir, cfg: DataConfig, device: torch.device) -> None:
        self.ds = ds = Dataset(dataset_dir)
        ds.load_manifest()
        self.cfg, self.device = cfg, device
        self.n_frames = ds.n_frames
        intr = Intrinsics.from_dict(ds.step_result("pose")["intrinsics"])
        self.intrinsics = intr.scaled(cfg.scale) if cfg.scale != 1 else intr
        self.size = (self.intrinsics.height, self.intrinsics.width)
        split = ds.read_json("split.json")
        self.train_frames = [int(i) for i in split["train"]]
        if cfg.max_train_frames:
            self.train_frames = self.train_frames[: cfg.max_train_frames]
        self.val_frames = [int(i) for i in split.get("val", [])][: cfg.max_val_frames]
        if len(self.train_frames) < 2:
            raise UserError(f"{ds.root}/split.json has {len(self.train_frames)} training frames",
                            "training needs a clip of at least a few seconds.")
        self.poses = torch.from_numpy(ds.load_array("poses").astype(np.float32))  # [N, 4, 4]
        if not torch.isfinite(self.poses).all():
            raise UserError(f"{ds.root}/poses.npy holds non-finite values", "run the pose step again.")
        self.template = ds.load_array("head_template", expect_rows=False)
        motion = ds.load_array("lower_face_motion")
        self.basis = PersonalMotionBasis.fit(motion[self.train_frames], cfg.motion_components)
        self.motion = self.basis.coefficients(motion)  # [N, C]
        eyes = ds.load_array("eye_openness").astype(np.float32)
        blink = ds.load_array("blink").astype(np.float32)
        self.eyes = torch.from_numpy(np.concatenate([eyes, blink[:, None]], 1))  # [N, 3]
        self.edge_frames = edge_frames(self.train_frames, blink, ds.load_array("mouth_opening"))
        self.warp = self._warp_tensors(eyes)
        bg = ds.read_image("background.png", cv2.IMREAD_COLOR)
        h, w = self.size
        bg = cv2.resize(bg, (w, h), interpolation=cv2.INTER_AREA) if bg.shape[:2] != (h, w) else bg
        self.background = torch.from_numpy(bg).float() / 255.0  # [H, W, 3]
        self.store = FrameStore(ds, self.size, cfg.cache_mb)
        self.row_of = torch.full((self.n_frames,), -1, dtype=torch.long)
        self.row_of[torch.tensor(self.train_frames)] = torch.arange(len(self.train_frames))

    def head_landmarks(self) -> tuple[np.ndarray, np.ndarray]:
        """(every frame's landmarks in the head frame [N, 478, 3], the neutral face [478, 3]), metres: the landmarks
        mapped into the head frame as the face_motion step mapped them."""
        ds = self.ds
        pose = ds.step_result("pose")
        weights = pose.get("rigid_weights")
        head = to_head_frame(ds.load_array("landmarks_3d").astype(np.float64), self.template.astype(np.float64),
                             tuple(pose.get("rigid_points", RIGID)), None if weights is None else np.asarray(weights))
        return head, ds.load_array("neutral_face", expect_rows=False).astype(np.float64)

    def _warp_tensors(self, openness: np.ndarray) -> dict[str, torch.Tensor]:
        """The head field's landmark warp (fields.FaceWarp) from this dataset's tracking."""
        head, neutral = self.head_landmarks()
        return FaceWarp.tracking_tensors(neutral, float(self.ds.step_result("face_motion")["face_size_m"]), self.basis,
                                         self.motion.numpy(), head, openness, self.train_frames)

    def mean_image(self) -> torch.Tensor:  # [H, W, 3] float: the baseline a trained avatar must beat
        acc = torch.zeros(*self.size, 3, dtype=torch.float64)
        for i in self.train_frames:
            acc += self.store.get(i).image.double()
        return (acc / len(self.train_frames) / 255.0).float()

    def _gather(self, frames: list[int], per_frame_pixels: list[torch.Tensor]) -> RayBatch:
        fr, px, rgb, lab, tor, jaw = [], [], [], [], [], []
        for i, p in zip(frames, per_frame_pixels):
            image, parsing, torso, _, under_jaw = self.store.get(i)
            fr.append(torch.full((p.shape[0],), i, dtype=torch.long))
            px.append(p)
            rgb.append(image[p[:, 1], p[:, 0]])
            lab.append(parsing[p[:, 1], p[:, 0]])
            tor.append(torso[p[:, 1], p[:, 0]])
            jaw.append(under_jaw[p[:, 1], p[:, 0]])
        frames_t = torch.cat(fr)
        dev = self.device
        return RayBatch(
            frames_t.to(dev), self.row_of[frames_t].to(dev), torch.cat(px).to(dev),
            (torch.cat(rgb).float() / 255.0).to(dev), torch.cat(lab).to(dev), (torch.cat(tor).float() / 255.0).to(dev),
            torch.cat(jaw).to(dev),
        )

    def pick_frames(self, gen: torch.Generator, n: int) -> list[int]:
        """`n` random training frames, each drawn from the edge frames (edge_frames) with probability
        `edge_frame_share` when there are any, else uniformly from all training frames."""
        edge = self.edge_frames
        from_edge = (torch.rand(n, generator=gen) < self.cfg.edge_frame_share).tolist()
        uniform = torch.randint(0, len(self.train_frames), (n,), generator=gen).tolist()
        pick = torch.randint(0, max(len(edge), 1), (n,), generator=gen).tolist()
        return [edge[p] if e and edge else self.train_frames[u] for e, u, p in zip(from_edge, uniform, pick)]

    def sample_rays(self, gen: torch.Generator, n_rays: int, n_frames: int, head_fraction: float,
                    mouth_fraction: float = 0.0, eye_fraction: float = 0.0, jaw_fraction: float = 0.0) -> RayBatch:
        """`n_rays` pixels from `n_frames` random training frames: `head_fraction` of them on head pixels (where the
        head field has something to learn), and out of that head share `mouth_fraction` on mouth pixels (lips,
        interior, teeth: where the motion shows) and `eye_fraction` around the eyes (eye label grown by
        EYE_REGION_GROW: where the eye code shows) and `jaw_fraction` where the torso layer runs on under the head
        (under_jaw_pixels: the torso stage); the rest uniform over the image. A frame without mouth, eye or under-jaw
        pixels gives those rays to the head."""
        h, w = self.size
        frames = self.pick_frames(gen, n_frames)
        per = [n_rays // n_frames + (1 if k < n_rays % n_frames else 0) for k in range(n_frames)]
        pixels = []
        for i, n in zip(frames, per):
            n_head = int(round(n * head_fraction))
            flat = [torch.randint(0, h * w, (n - n_head,), generator=gen)]
            frame = self.store.get(i)
            lab = frame.parsing.reshape(-1).long()
            regions = ((mouth_fraction, lambda: MOUTH_LUT[lab]), (eye_fraction, lambda: frame.eye_region),
                       (jaw_fraction, lambda: frame.under_jaw.reshape(-1)))
            for fraction, region in regions:
                k = min(int(round(n * fraction)), n_head)
                idx = torch.nonzero(region()).reshape(-1) if k else lab[:0]  # the mask only when rays go there
                if idx.numel():
                    flat.append(idx[torch.randint(0, idx.numel(), (k,), generator=gen)])
                    n_head -= k
            head_idx = torch.nonzero(HEAD_LUT[lab]).reshape(-1)
            if head_idx.numel() and n_head:
                flat.append(head_idx[torch.randint(0, head_idx.numel(), (n_head,), generator=gen)])
            else:
                flat.append(torch.randint(0, h * w, (n_head,), generator=gen))
            flat = torch.cat(flat)
            pixels.append(torch.stack([flat % w, flat // w], -1))
        return self._gather(frames, pixels)

    def sample_mouth_patches(self, gen: torch.Generator, n_patches: int, patch: int) -> RayBatch:
        """`n_patches` square patches (row-major, patch x patch pixels each) around the mouth of random training
        frames, jittered by up to a quarter patch; falls back to the head's centre when no mouth label is present."""
        h, w = self.size
        patch = min(patch, h, w)
        frames = self.pick_frames(gen, n_patches)
        jit = torch.randint(-(patch // 4), patch // 4 + 1, (n_patches, 2), generator=gen)
        pixels = []
        for k, i in enumerate(frames):
            lab = self.store.get(i).parsing
            ys, xs = torch.nonzero(MOUTH_LUT[lab.long()], as_tuple=True)
            if ys.numel() == 0:
                ys, xs = torch.nonzero(HEAD_LUT[lab.long()], as_tuple=True)
            cx = int(xs.float().mean()) if xs.numel() else w // 2
            cy = int(ys.float().mean()) if ys.numel() else h // 2
            x0 = min(max(cx - patch // 2 + int(jit[k, 0]), 0), w - patch)
            y0 = min(max(cy - patch // 2 + int(jit[k, 1]), 0), h - patch)
            yy, xx = torch.meshgrid(torch.arange(y0, y0 + patch), torch.arange(x0, x0 + patch), indexing="ij")
            pixels.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], -1))
        return self._gather(frames, pixels)

    def full_frame(self, i: int) -> RayBatch:
        """Every pixel of frame `i`, row-major."""
        h, w = self.size
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        return self._gather([i], [torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)])
