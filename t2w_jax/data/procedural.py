"""Procedural "shapes" images: coloured shapes on cluttered backgrounds.

The embedded dataset of t2w_jax needs no download. Each class is a colour and a
shape ("red circle", "blue star"): 10 colours x 10 shapes = 100 classes whose
names compose, so a text encoder can relate "red star" to "red circle" and to
"blue star". The class of an image is its largest shape, drawn last (on top).

What makes it hard enough that a tiny CNN does not saturate:

* position, scale and rotation of the target vary;
* the background is a two-colour linear gradient of any hue;
* smaller distractor shapes of other classes clutter the image; they often
  share the target's colour or its shape, so neither colour nor shape alone
  gives the class away;
* colours are jittered within each colour's range of hue, saturation and
  value (brown and orange share hues and differ in value; pink is a pale
  magenta; gray has any hue and no saturation);
* a random linear shading over the object, and pixel noise.

The knobs live in `RenderConfig` (defaults are the module constants below), so
a config can make the data easier or harder without touching the code.

Rendering is vectorised numpy: each shape is a signed distance function (SDF)
evaluated on the pixel grid of a whole batch of images at once, with a one-pixel
soft edge for anti-aliasing. Same seed, same bytes (numpy's PCG64 streams are
stable across platforms and versions).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable

import numpy as np

# ---------------------------------------------------------------------------
# Classes.
# ---------------------------------------------------------------------------

# (name, hue centre, hue jitter, saturation range, value range); hue in [0, 1).
# A hue centre of None means "any hue" (used for gray, whose hue is invisible).
COLOURS: tuple[tuple[str, float | None, float, tuple[float, float],
                     tuple[float, float]], ...] = (
    ("red", 0.0, 0.025, (0.75, 1.0), (0.65, 1.0)),
    ("orange", 0.075, 0.015, (0.8, 1.0), (0.85, 1.0)),
    ("yellow", 0.150, 0.02, (0.75, 1.0), (0.85, 1.0)),
    ("green", 0.33, 0.05, (0.6, 1.0), (0.5, 0.9)),
    ("cyan", 0.50, 0.03, (0.6, 1.0), (0.7, 1.0)),
    ("blue", 0.64, 0.03, (0.7, 1.0), (0.6, 1.0)),
    ("purple", 0.77, 0.03, (0.55, 0.9), (0.45, 0.85)),
    ("pink", 0.92, 0.03, (0.3, 0.55), (0.9, 1.0)),
    ("brown", 0.07, 0.02, (0.6, 0.85), (0.3, 0.5)),
    ("gray", None, 0.0, (0.0, 0.08), (0.4, 0.75)),
)
COLOUR_NAMES: tuple[str, ...] = tuple(c[0] for c in COLOURS)

SHAPE_NAMES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross",
    "heart", "ring", "crescent", "arrow", "diamond",
)

NUM_COLOURS = len(COLOURS)
NUM_SHAPES = len(SHAPE_NAMES)
NUM_CLASSES = NUM_COLOURS * NUM_SHAPES


def class_names() -> tuple[str, ...]:
  """Returns the 100 class names, "<colour> <shape>", colour-major.

  Label `l` is colour `l // NUM_SHAPES` and shape `l % NUM_SHAPES`.
  """
  return tuple(f"{c} {s}" for c, s in itertools.product(COLOUR_NAMES, SHAPE_NAMES))


def split_label(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Splits class labels into (colour index, shape index) arrays."""
  labels = np.asarray(labels)
  return labels // NUM_SHAPES, labels % NUM_SHAPES


# ---------------------------------------------------------------------------
# Difficulty knobs.
# ---------------------------------------------------------------------------

IMAGE_SIZE = 32
# Target radius, in units of half the image width.
SCALE_RANGE = (0.38, 0.62)
# Each image has 0..MAX_DISTRACTORS distractors, uniformly.
MAX_DISTRACTORS = 3
# Distractor radius as a fraction of the target's: always smaller, so "the
# largest shape" is a well-defined label.
DISTRACTOR_SCALE_RANGE = (0.35, 0.65)
NOISE_STD = 0.05  # Std of the (triangular) pixel noise, image in [0, 1].
HUE_JITTER_SCALE = 1.0  # Multiplies each colour's own hue jitter.
SHADE_MAX = 0.25  # Strength of the linear shading across an object.
BG_MAX_SATURATION = 0.5
# The background behind the target is pushed away from the target's colour
# when closer than this (RGB distance in [0, 1]^3), so targets stay visible.
MIN_CONTRAST = 0.35

# Images rendered per vectorised batch. Fixed, so outputs do not depend on it
# being tuned: the random stream is consumed batch by batch.
_BATCH = 512


@dataclasses.dataclass(frozen=True)
class RenderConfig:
  """Difficulty knobs of the renderer; the defaults are the module constants."""
  image_size: int = IMAGE_SIZE
  scale_range: tuple[float, float] = SCALE_RANGE
  max_distractors: int = MAX_DISTRACTORS
  distractor_scale_range: tuple[float, float] = DISTRACTOR_SCALE_RANGE
  noise_std: float = NOISE_STD
  hue_jitter_scale: float = HUE_JITTER_SCALE
  shade_max: float = SHADE_MAX
  bg_max_saturation: float = BG_MAX_SATURATION
  min_contrast: float = MIN_CONTRAST

  def __post_init__(self):
    if self.image_size < 4:
      raise ValueError(f"image_size must be >= 4, got {self.image_size}")
    if self.max_distractors < 0:
      raise ValueError(f"max_distractors must be >= 0, got {self.max_distractors}")
    if self.noise_std < 0:
      raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
    for field in ("scale_range", "distractor_scale_range"):
      lo, hi = getattr(self, field)
      if not 0 < lo <= hi:
        raise ValueError(f"{field} must satisfy 0 < low <= high, got {(lo, hi)}")


# ---------------------------------------------------------------------------
# Signed distance functions of the unit shapes (each fits in a radius ~1).
# Most are from Inigo Quilez's catalogue of 2D SDFs. Negative inside.
# ---------------------------------------------------------------------------


def _length(x, y):
  return np.sqrt(x * x + y * y)


def _sd_box(x, y, bx, by):
  dx = np.abs(x) - bx
  dy = np.abs(y) - by
  return (_length(np.maximum(dx, 0.0), np.maximum(dy, 0.0))
          + np.minimum(np.maximum(dx, dy), 0.0))


def _sd_triangle(x, y, p0, p1, p2):
  """Exact SDF of the triangle with vertices p0, p1, p2."""
  verts = (p0, p1, p2)
  e = [(verts[(i + 1) % 3][0] - verts[i][0], verts[(i + 1) % 3][1] - verts[i][1])
       for i in range(3)]
  s = np.sign(e[0][0] * e[2][1] - e[0][1] * e[2][0])
  dist2 = None
  side = None
  for (ax, ay), (ex, ey) in zip(verts, e):
    vx, vy = x - ax, y - ay
    h = np.clip((vx * ex + vy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    qx, qy = vx - ex * h, vy - ey * h
    d2 = qx * qx + qy * qy
    c = s * (vx * ey - vy * ex)
    dist2 = d2 if dist2 is None else np.minimum(dist2, d2)
    side = c if side is None else np.minimum(side, c)
  return -np.sqrt(dist2) * np.sign(side)


def _sd_circle(x, y):
  return _length(x, y) - 0.85


def _sd_square(x, y):
  return _sd_box(x, y, 0.72, 0.72)


_TRI = ((0.0, 1.0), (-0.866, -0.5), (0.866, -0.5))


def _sd_equilateral(x, y):
  # Centroid at the origin, circumradius 1.05.
  return _sd_triangle(x / 1.05, y / 1.05, *_TRI) * 1.05


def _sd_star(x, y, r=1.0, rf=0.45):
  k1x, k1y = 0.809016994375, -0.587785252292
  k2x, k2y = -k1x, k1y
  x = np.abs(x)
  t = 2.0 * np.maximum(k1x * x + k1y * y, 0.0)
  x, y = x - t * k1x, y - t * k1y
  t = 2.0 * np.maximum(k2x * x + k2y * y, 0.0)
  x, y = x - t * k2x, y - t * k2y
  x = np.abs(x)
  y = y - r
  bax, bay = rf * -k1y, rf * k1x - 1.0
  h = np.clip((x * bax + y * bay) / (bax * bax + bay * bay), 0.0, r)
  return _length(x - bax * h, y - bay * h) * np.sign(y * bax - x * bay)


def _sd_cross(x, y):
  return np.minimum(_sd_box(x, y, 0.95, 0.3), _sd_box(x, y, 0.3, 0.95))


def _sd_heart(x, y):
  # IQ's heart spans x in [-0.6, 0.6], y in [0, 1.1]; centre and enlarge it.
  k = 1.55
  x = np.abs(x / k)
  y = y / k + 0.55
  upper = _length(x - 0.25, y - 0.75) - np.sqrt(2.0) / 4.0
  m = 0.5 * np.maximum(x + y, 0.0)
  lower = (np.sqrt(np.minimum(x * x + (y - 1.0) ** 2, (x - m) ** 2 + (y - m) ** 2))
           * np.sign(x - y))
  return np.where(y + x > 1.0, upper, lower) * k


def _sd_ring(x, y):
  return np.abs(_length(x, y) - 0.68) - 0.24


def _sd_crescent(x, y):
  x = x + 0.1  # Centre the crescent's mass.
  return np.maximum(_length(x, y) - 0.92, -(_length(x - 0.42, y + 0.05) - 0.72))


def _sd_arrow(x, y):
  shaft = _sd_box(x + 0.35, y, 0.6, 0.18)
  head = _sd_triangle(x, y, (0.98, 0.0), (0.1, 0.6), (0.1, -0.6))
  return np.minimum(shaft, head)


def _sd_diamond(x, y, bx=0.62, by=1.0):
  # A rhombus taller than wide: unlike a square, it stays one under rotation.
  # (A hexagon was tried first: at 16x16 it is indistinguishable from a circle.)
  x = np.abs(x)
  y = np.abs(y)
  h = np.clip(((bx - 2.0 * x) * bx - (by - 2.0 * y) * by) / (bx * bx + by * by),
              -1.0, 1.0)
  d = _length(x - 0.5 * bx * (1.0 - h), y - 0.5 * by * (1.0 + h))
  return d * np.sign(x * by + y * bx - bx * by)


SHAPE_SDFS: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    _sd_circle, _sd_square, _sd_equilateral, _sd_star, _sd_cross,
    _sd_heart, _sd_ring, _sd_crescent, _sd_arrow, _sd_diamond,
)
assert len(SHAPE_SDFS) == NUM_SHAPES


def shape_sdf(shape: int | str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Signed distance to a unit shape (negative inside), y pointing up.

  Args:
    shape: shape index or name (see `SHAPE_NAMES`).
    x: x coordinates, any shape.
    y: y coordinates, same shape as x.

  Returns:
    The signed distance at each point, as x's shape.
  """
  if isinstance(shape, str):
    if shape not in SHAPE_NAMES:
      raise KeyError(f"unknown shape {shape!r}; known: {', '.join(SHAPE_NAMES)}")
    shape = SHAPE_NAMES.index(shape)
  return SHAPE_SDFS[shape](np.asarray(x, np.float32), np.asarray(y, np.float32))


# ---------------------------------------------------------------------------
# Colours.
# ---------------------------------------------------------------------------


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Vectorised HSV -> RGB, all in [0, 1]; returns shape h.shape + (3,)."""
  h6 = np.mod(h, 1.0) * 6.0
  out = []
  for n in (5.0, 3.0, 1.0):
    k = np.mod(n + h6, 6.0)
    out.append(v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
  return np.stack(out, axis=-1).astype(np.float32)


_HUE_CENTRE = np.array([-1.0 if c[1] is None else c[1] for c in COLOURS], np.float32)
_HUE_JITTER = np.array([c[2] for c in COLOURS], np.float32)
_SAT_RANGE = np.array([c[3] for c in COLOURS], np.float32)
_VAL_RANGE = np.array([c[4] for c in COLOURS], np.float32)


def _sample_colour_hsv(rng, colour, cfg):
  """Samples jittered HSV values for an array of colour indices."""
  n = colour.shape
  u = rng.random((3,) + n, dtype=np.float32)
  any_hue = _HUE_CENTRE[colour] < 0
  jitter = _HUE_JITTER[colour] * cfg.hue_jitter_scale
  h = np.where(any_hue, u[0], _HUE_CENTRE[colour] + (2.0 * u[0] - 1.0) * jitter)
  s = _SAT_RANGE[colour, 0] + u[1] * (_SAT_RANGE[colour, 1] - _SAT_RANGE[colour, 0])
  v = _VAL_RANGE[colour, 0] + u[2] * (_VAL_RANGE[colour, 1] - _VAL_RANGE[colour, 0])
  return np.mod(h, 1.0), s, v


# ---------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------


def _pixel_grid(size):
  """Pixel centres in [-1, 1], y up; returns (x, y), each (size, size)."""
  c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
  x, y = np.meshgrid(c, -c)
  return x, y


def _affine(a, b, c, gx, gy):
  """Per-image affine field a*x + b*y + c on the grid: (B, S, S)."""
  out = a[:, None, None] * gx[None]
  out += b[:, None, None] * gy[None]
  out += c[:, None, None]
  return out


def _coverage(rng, shape, cx, cy, radius, gx, gy, px):
  """Anti-aliased coverage (B, S, S) of one randomly rotated object per image."""
  b = shape.shape[0]
  theta = rng.random(b, dtype=np.float32) * np.float32(2.0 * np.pi)
  # Shape frame: rotate the world by -theta about the centre, then unit-scale.
  # lx = (cos*(x-cx) + sin*(y-cy)) / r, ly = (-sin*(x-cx) + cos*(y-cy)) / r.
  cos, sin = np.cos(theta) / radius, np.sin(theta) / radius
  alpha = np.empty((b,) + gx.shape, np.float32)
  for k in range(NUM_SHAPES):
    idx = np.flatnonzero(shape == k)
    if idx.size == 0:
      continue
    c, s, x0, y0 = cos[idx], sin[idx], cx[idx], cy[idx]
    lx = _affine(c, s, -(c * x0 + s * y0), gx, gy)
    ly = _affine(-s, c, s * x0 - c * y0, gx, gy)
    d = SHAPE_SDFS[k](lx, ly)
    # Distance in pixels -> coverage, with a one-pixel soft edge.
    d *= (radius[idx] / px)[:, None, None]
    alpha[idx] = np.clip(0.5 - d, 0.0, 1.0)
  return alpha


def _shading(rng, cx, cy, radius, gx, gy, cfg):
  """Per-pixel brightness factor (B, S, S): a random linear ramp across the object."""
  b = cx.shape[0]
  u = rng.random((2, b), dtype=np.float32)
  phi = u[0] * np.float32(2.0 * np.pi)
  amp = u[1] * np.float32(cfg.shade_max) / radius
  a, c = amp * np.cos(phi), amp * np.sin(phi)
  return _affine(a, c, 1.0 - a * cx - c * cy, gx, gy)


def _composite(img, alpha, shade, rgb):
  """Paints rgb * shade over img (B, 3, S, S) in place, with coverage alpha."""
  img *= (1.0 - alpha)[:, None]
  alpha *= shade
  img += alpha[:, None] * rgb[:, :, None, None]


def render(labels: np.ndarray, rng: np.random.Generator,
           config: RenderConfig = RenderConfig()) -> np.ndarray:
  """Renders one image per label.

  Args:
    labels: int array (N,) of class labels in [0, NUM_CLASSES).
    rng: numpy Generator; consumed in batches of a fixed size, so the output
      depends only on its state and on `labels`.
    config: difficulty knobs.

  Returns:
    uint8 array (N, S, S, 3), S = config.image_size.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise ValueError(f"labels must lie in [0, {NUM_CLASSES}), got range "
                     f"[{labels.min()}, {labels.max()}]")
  size = config.image_size
  out = np.empty((labels.size, size, size, 3), np.uint8)
  for start in range(0, labels.size, _BATCH):
    batch = labels[start:start + _BATCH]
    out[start:start + batch.size] = _render_batch(batch, rng, config)
  return out


def _render_batch(labels, rng, cfg):
  b = labels.shape[0]
  size = cfg.image_size
  gx, gy = _pixel_grid(size)
  px = np.float32(2.0 / size)

  # Work in order of decreasing distractor count, so distractor slot k only
  # touches a prefix of the batch; the order is undone at the end.
  num_distractors = rng.integers(0, cfg.max_distractors + 1, size=b)
  order = np.argsort(-num_distractors, kind="stable")
  num_distractors = num_distractors[order]
  labels = labels[order]
  colour, shape = split_label(labels)

  # Target geometry: mostly inside the frame.
  lo, hi = cfg.scale_range
  radius = (lo + (hi - lo) * rng.random(b, dtype=np.float32)).astype(np.float32)
  lim = np.maximum(1.0 - 0.8 * radius, 0.0)
  cx = (2.0 * rng.random(b, dtype=np.float32) - 1.0) * lim
  cy = (2.0 * rng.random(b, dtype=np.float32) - 1.0) * lim
  h, s, v = _sample_colour_hsv(rng, colour, cfg)
  target_rgb = hsv_to_rgb(h, s, v)

  # Background: a linear gradient between two colours of any hue.
  u = rng.random((7, b), dtype=np.float32)
  h0, s0, v0 = u[0], u[1] * cfg.bg_max_saturation, 0.1 + 0.85 * u[2]
  h1 = h0 + (u[3] - 0.5) * 0.3
  s1 = np.clip(s0 + (u[4] - 0.5) * 0.4, 0.0, 1.0)
  v1 = np.clip(v0 + (u[5] - 0.5) * 0.6, 0.05, 1.0)
  phi = u[6] * np.float32(2.0 * np.pi)
  grad_x, grad_y = 0.35 * np.cos(phi), 0.35 * np.sin(phi)
  # Where the background under the target is too close to the target's
  # colour, move both ends of the gradient far from the target's value.
  t_c = np.clip(0.5 + cx * grad_x + cy * grad_y, 0.0, 1.0)
  bg0, bg1 = hsv_to_rgb(h0, s0, v0), hsv_to_rgb(h1, s1, v1)
  bg_c = bg0 + (bg1 - bg0) * t_c[:, None]
  weak = np.linalg.norm(bg_c - target_rgb, axis=-1) < cfg.min_contrast
  uv = rng.random((2, b), dtype=np.float32)
  flip_v = np.where(v > 0.55, 0.05 + 0.2 * uv[0], 0.75 + 0.23 * uv[0])
  v0 = np.where(weak, flip_v, v0)
  v1 = np.where(weak, np.clip(flip_v + (uv[1] - 0.5) * 0.2, 0.0, 1.0), v1)
  bg0, bg1 = hsv_to_rgb(h0, s0, v0), hsv_to_rgb(h1, s1, v1)
  t = np.clip(_affine(grad_x, grad_y, np.full(b, 0.5, np.float32), gx, gy), 0.0, 1.0)
  # Channels first while painting: numpy broadcasts far faster over a long
  # contiguous inner axis than over a trailing axis of 3.
  img = t[:, None] * (bg1 - bg0)[:, :, None, None]
  img += bg0[:, :, None, None]

  # Distractors: smaller shapes of any class but the target's, drawn first.
  dlo, dhi = cfg.distractor_scale_range
  for k in range(cfg.max_distractors):
    m = int(np.count_nonzero(num_distractors > k))
    if m == 0:
      break
    other = rng.integers(0, NUM_CLASSES - 1, size=m)
    other = other + (other >= labels[:m])  # Any class but the target's.
    d_colour, d_shape = split_label(other)
    d_radius = radius[:m] * (dlo + (dhi - dlo) * rng.random(m, dtype=np.float32))
    d_cx = 1.8 * rng.random(m, dtype=np.float32) - 0.9
    d_cy = 1.8 * rng.random(m, dtype=np.float32) - 0.9
    d_rgb = hsv_to_rgb(*_sample_colour_hsv(rng, d_colour, cfg))
    alpha = _coverage(rng, d_shape, d_cx, d_cy, d_radius, gx, gy, px)
    shade = _shading(rng, d_cx, d_cy, d_radius, gx, gy, cfg)
    _composite(img[:m], alpha, shade, d_rgb)

  # The target, on top.
  alpha = _coverage(rng, shape, cx, cy, radius, gx, gy, px)
  shade = _shading(rng, cx, cy, radius, gx, gy, cfg)
  _composite(img, alpha, shade, target_rgb)

  if cfg.noise_std > 0:
    # Triangular noise (the sum of two uniforms) with std noise_std: close
    # enough to Gaussian here, and several times cheaper to draw.
    u = rng.integers(0, 256, size=(2,) + img.shape, dtype=np.uint8)
    noise = u[0].astype(np.float32)
    noise += u[1]
    noise -= 255.0
    noise *= np.float32(cfg.noise_std * np.sqrt(6.0) / 255.0)
    img += noise
  img *= 255.0
  np.rint(img, out=img)
  np.clip(img, 0.0, 255.0, out=img)
  img = img.transpose(0, 2, 3, 1).astype(np.uint8)
  inverse = np.empty_like(order)
  inverse[order] = np.arange(b)
  return img[inverse]


_SPLIT_IDS = {"train": 0, "test": 1}


def generate_split(split: str, *, seed: int = 0, per_class: int,
                   config: RenderConfig = RenderConfig()
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Renders a whole split: `per_class` images of every class, shuffled.

  Train and test come from independent random streams of the same seed.

  Args:
    split: "train" or "test".
    seed: dataset seed; same seed, same bytes.
    per_class: images per class (> 0).
    config: difficulty knobs.

  Returns:
    (images uint8 (N, S, S, 3), labels int32 (N,)), N = per_class * 100.
  """
  if split not in _SPLIT_IDS:
    raise ValueError(f"unknown split {split!r}; known: {sorted(_SPLIT_IDS)}")
  if per_class <= 0:
    raise ValueError(f"per_class must be positive, got {per_class}")
  rng = np.random.Generator(np.random.PCG64(
      np.random.SeedSequence([int(seed), _SPLIT_IDS[split]])))
  labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int32), per_class)
  labels = labels[rng.permutation(labels.size)]
  return render(labels, rng, config), labels
