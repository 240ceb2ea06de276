"""Procedural street-like scenes: the package's built-in default data (no download).

Each scene has a horizon, a sky with clouds, a skyline of buildings with windows, trees, a
road in perspective with lane dashes, sidewalks (tiled) with grass verges, and, sorted by depth
so that near objects occlude far ones: poles (thin, 1-3 px at 128 px width) with traffic signs,
cars (body, cabin, windows, wheels) and people (head, torso, legs). Colours are jittered per
object, images get smooth and per-pixel noise, a global gain and colour cast, so the task is not
solvable from one pixel's colour alone. Object sizes follow the perspective: far objects are a
few pixels.

Classes (`SYNTHETIC_INFO`, 9 train ids, no ignored pixels): sky, building, road, sidewalk,
vegetation, pole, sign, car, person.

Scene `index` of `seed` is a pure function of `(seed, index, height, width)`
(`np.random.default_rng([seed, index])`), so datasets are reproducible and any subset can be
regenerated; coordinates are relative, so any size works.

Example:
    >>> image, label = synthetic_scene(96, 128, seed=0)          # uint8 (96,128,3), (96,128)
    >>> ds = make_dataset(synthetic_source(64, 96, 128, seed=0), crop_size=(96, 128),
    ...                   batch_size=8, scale_range=(0.75, 1.5), seed=0)
"""

import numpy as np
import tensorflow as tf

from keras_gald.data.info import DatasetInfo

SYNTHETIC_CLASSES = (
    "sky", "building", "road", "sidewalk", "vegetation", "pole", "sign", "car", "person",
)
SKY, BUILDING, ROAD, SIDEWALK, VEGETATION, POLE, SIGN, CAR, PERSON = range(9)
SYNTHETIC_PALETTE = (
    (70, 130, 180), (70, 70, 70), (128, 64, 128), (244, 35, 232), (107, 142, 35),
    (153, 153, 153), (220, 220, 0), (0, 0, 142), (220, 20, 60),
)
SYNTHETIC_INFO = DatasetInfo(
    name="synthetic_streets",
    num_classes=len(SYNTHETIC_CLASSES),
    class_names=SYNTHETIC_CLASSES,
    palette=SYNTHETIC_PALETTE,
    description="procedural street scenes (keras_gald.data.synthetic), train ids stored directly",
)

_BUILDING_COLOURS = ((120, 110, 100), (150, 140, 130), (100, 90, 85), (170, 150, 120),
                     (90, 95, 105), (140, 115, 105), (185, 180, 170))
_CAR_COLOURS = ((180, 25, 25), (25, 45, 150), (215, 215, 215), (35, 35, 38), (150, 150, 155),
                (200, 175, 40), (40, 100, 60), (120, 60, 30))
_CLOTHES = ((30, 30, 40), (150, 30, 40), (40, 60, 130), (200, 200, 190), (90, 80, 60),
            (60, 110, 70), (170, 120, 40))
_SIGN_COLOURS = ((205, 30, 30), (30, 70, 185), (235, 200, 25))


def _smooth_noise(rng, h, w, cells):
    """Zero-mean, unit-ish bilinear value noise with about `cells` cells across the width."""
    gx = max(2, int(cells)) + 1
    gy = max(2, int(round(cells * h / max(w, 1)))) + 1
    grid = rng.standard_normal((gy, gx))
    ys = np.linspace(0, gy - 1, h)
    xs = np.linspace(0, gx - 1, w)
    y0 = np.minimum(np.floor(ys).astype(int), gy - 2)
    x0 = np.minimum(np.floor(xs).astype(int), gx - 2)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


class _Canvas:
    def __init__(self, height, width, rng):
        self.h, self.w, self.rng = height, width, rng
        self.image = np.zeros((height, width, 3), np.float32)
        self.label = np.zeros((height, width), np.uint8)
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.yy += 0.5
        self.xx += 0.5
        self.fine = rng.standard_normal((height, width)).astype(np.float32)

    def jitter(self, colour, amount=15):
        return np.clip(np.asarray(colour, np.float32) + self.rng.uniform(-amount, amount, 3), 0, 255)

    def paint(self, region, cls, colour):
        """`colour`: (3,) or a (H, W, 3) field."""
        if not region.any():
            return
        self.label[region] = cls
        colour = np.asarray(colour, np.float32)
        self.image[region] = colour[region] if colour.ndim == 3 else colour

    def textured(self, colour, fine=8.0, smooth=0.0, cells=6):
        field = np.broadcast_to(np.asarray(colour, np.float32), (self.h, self.w, 3)).copy()
        field += fine * self.fine[..., None]
        if smooth:
            field += smooth * _smooth_noise(self.rng, self.h, self.w, cells)[..., None]
        return field


def synthetic_scene(height, width, seed=0, index=0):
    """One scene: `(image uint8 (height, width, 3), label uint8 (height, width))`."""
    if height < 8 or width < 8:
        raise ValueError(f"synthetic_scene needs height, width >= 8, got {height}x{width}")
    rng = np.random.default_rng([int(seed), int(index)])
    cv = _Canvas(height, width, rng)
    H, W = float(height), float(width)
    yy, xx = cv.yy, cv.xx
    u, v = xx / W, yy / H
    hz = rng.uniform(0.36, 0.52)

    # Sky: vertical gradient plus clouds.
    top, bottom = cv.jitter((60, 110, 195), 20), cv.jitter((165, 195, 230), 15)
    t = np.clip(v / hz, 0, 1)[..., None]
    sky = top * (1 - t) + bottom * t
    clouds = np.clip(_smooth_noise(rng, height, width, rng.uniform(3, 6)) - 0.2, 0, 1)[..., None]
    sky = sky * (1 - 0.7 * clouds) + 235 * 0.7 * clouds + 3 * cv.fine[..., None]
    cv.paint(np.ones((height, width), bool), SKY, sky)

    # Skyline of buildings with window grids.
    x = rng.uniform(-0.1, 0.0)
    while x < 1.0:
        bw = rng.uniform(0.08, 0.26)
        if rng.random() < 0.85:
            b_top = hz - rng.uniform(0.08, min(0.38, hz - 0.02))
            region = (u >= x) & (u < x + bw) & (v >= b_top) & (v < hz + 0.01)
            colour = cv.textured(cv.jitter(_BUILDING_COLOURS[rng.integers(len(_BUILDING_COLOURS))]),
                                 fine=6, smooth=8, cells=10)
            sx, sy = rng.uniform(0.025, 0.045), rng.uniform(0.04, 0.07)
            windows = (
                (((u - x) % sx) > sx * 0.35) & (((v - b_top) % sy) > sy * 0.45)
                & (u > x + 0.01) & (u < x + bw - 0.01) & (v > b_top + 0.015) & (v < hz - 0.02)
            )
            glass = cv.jitter((55, 65, 85), 12)
            colour[windows] = glass + 6 * cv.fine[windows][:, None]
            cv.paint(region, BUILDING, colour)
        x += bw

    # Trees (crown + trunk) standing behind the ground line.
    for _ in range(rng.integers(1, 4)):
        cx = rng.uniform(0, 1) * W
        r = rng.uniform(0.06, 0.13) * W
        cy = (hz - rng.uniform(0.03, 0.12)) * H - 0.4 * r
        bump = 0.25 * _smooth_noise(rng, height, width, 12)
        crown = ((xx - cx) / r) ** 2 + ((yy - cy) / (0.85 * r)) ** 2 < 1 + bump
        trunk_w = max(1.0, 0.12 * r)
        trunk = (np.abs(xx - cx) < trunk_w / 2) & (yy >= cy) & (v < hz + 0.01)
        leaves = cv.textured(cv.jitter((60, 115, 40), 18), fine=22, smooth=14, cells=16)
        cv.paint(trunk, VEGETATION, cv.textured(cv.jitter((95, 70, 45), 10), fine=6))
        cv.paint(crown, VEGETATION, leaves)

    # Ground: road trapezoid, sidewalks, grass verges.
    ground = v >= hz
    tt = np.clip((v - hz) / (1 - hz), 0, 1)
    vx, bx = rng.uniform(0.38, 0.62), rng.uniform(0.35, 0.65)
    half0, half1 = rng.uniform(0.01, 0.03), rng.uniform(0.35, 0.55)
    centre = vx + (bx - vx) * tt
    half = half0 + (half1 - half0) * tt
    side_w = rng.uniform(1.3, 1.6)
    dist = np.abs(u - centre)
    road = ground & (dist < half)
    sidewalk = ground & (dist >= half) & (dist < half * side_w + 0.01)
    verge = ground & ~road & ~sidewalk
    left = u < centre
    grass_left, grass_right = rng.random() < 0.6, rng.random() < 0.6
    grass = verge & ((left & grass_left) | (~left & grass_right))
    sidewalk |= verge & ~grass

    asphalt = cv.textured(cv.jitter((85, 82, 88), 12), fine=9, smooth=6, cells=20)
    dash_phase = (1.0 / (tt + 0.08)) % 1.2 < 0.6
    lane = road & (dist < 0.003 + 0.012 * tt) & dash_phase
    asphalt[lane] = cv.jitter((225, 225, 215), 10)
    cv.paint(road, ROAD, asphalt)
    paving = cv.textured(cv.jitter((175, 160, 165), 15), fine=7, smooth=5)
    joints = ((np.log(tt + 0.05) * 6) % 1 < 0.18) | (((u - centre) / (half + 1e-3) * 4) % 1 < 0.12)
    paving[joints] *= 0.8
    cv.paint(sidewalk, SIDEWALK, paving)
    cv.paint(grass, VEGETATION, cv.textured(cv.jitter((95, 135, 50), 15), fine=18, smooth=10, cells=18))

    def on_sidewalk(depth, side):
        c = vx + (bx - vx) * depth
        hw = half0 + (half1 - half0) * depth
        return (c + side * hw * (1 + side_w) / 2 + side * 0.005) * W

    def on_road(depth):
        c = vx + (bx - vx) * depth
        hw = half0 + (half1 - half0) * depth
        return (c + rng.uniform(-0.65, 0.65) * hw) * W

    objects = []
    for _ in range(rng.integers(1, 4)):
        objects.append(("pole", rng.uniform(0.12, 0.95), rng.choice((-1, 1))))
    for _ in range(rng.integers(1, 4)):
        objects.append(("car", rng.uniform(0.08, 0.95), 0))
    for _ in range(rng.integers(1, 4)):
        objects.append(("person", rng.uniform(0.1, 0.95), rng.choice((-1, 1))))
    objects.sort(key=lambda o: o[1])

    for kind, depth, side in objects:
        base = (hz + depth * (1 - hz)) * H
        if kind == "pole":
            px = on_sidewalk(depth, side)
            pw = max(1.0, round(rng.uniform(0.006, 0.014) * W * (0.4 + depth)))
            ptop = max(0.02 * H, base - depth * rng.uniform(0.8, 1.15) * H)
            x0 = np.floor(px - pw / 2)
            pole = (xx >= x0) & (xx < x0 + pw) & (yy >= ptop) & (yy < base)
            metal = cv.jitter((125, 125, 130), 12) + 4 * cv.fine[..., None]
            cv.paint(pole, POLE, metal)
            if rng.random() < 0.8:
                size = max(3.0, depth * rng.uniform(0.05, 0.09) * W)
                sy = ptop + size / 2
                shape = rng.integers(3)
                dx, dy = np.abs(xx - px), np.abs(yy - sy)
                if shape == 0:
                    sign = (dx ** 2 + dy ** 2) < (size / 2) ** 2
                elif shape == 1:
                    sign = (dx < size / 2) & (dy < size * 0.35)
                else:
                    sign = (yy >= sy - size / 2) & (yy < sy + size / 2) & (
                        dx < (yy - (sy - size / 2)) / 2 + 0.5)
                colour = cv.jitter(_SIGN_COLOURS[rng.integers(3)], 15)
                inner = (dx ** 2 + dy ** 2) < (size / 5) ** 2
                field = np.broadcast_to(colour, (height, width, 3)).copy()
                field[inner] = (240, 240, 235)
                cv.paint(sign, SIGN, field)
        elif kind == "car":
            cxp = on_road(depth)
            cw = depth * rng.uniform(0.28, 0.42) * W
            ch = cw * rng.uniform(0.5, 0.62)
            dx = np.abs(xx - cxp)
            body = (dx < cw / 2) & (yy >= base - ch * 0.68) & (yy < base - ch * 0.15)
            inset = rng.uniform(0.12, 0.22) * cw
            cabin = (dx < cw / 2 - inset) & (yy >= base - ch) & (yy < base - ch * 0.66)
            wr = ch * 0.2
            wheels = ((np.minimum(np.abs(xx - (cxp - cw * 0.3)), np.abs(xx - (cxp + cw * 0.3))) ** 2
                       + (yy - (base - wr)) ** 2) < wr ** 2)
            paint = cv.jitter(_CAR_COLOURS[rng.integers(len(_CAR_COLOURS))], 20)
            shade = (1.1 - 0.35 * np.clip((yy - (base - ch)) / max(ch, 1), 0, 1))[..., None]
            field = np.clip(paint[None, None, :] * shade, 0, 255) + 4 * cv.fine[..., None]
            window = cabin & (dx < cw / 2 - inset - max(1, 0.04 * cw)) & (yy >= base - ch * 0.93)
            field[window] = cv.jitter((45, 55, 70), 10)
            field[wheels] = cv.jitter((25, 25, 25), 5)
            cv.paint(body | cabin | wheels, CAR, field)
        else:
            px = on_sidewalk(depth, side) + rng.uniform(-0.3, 0.3) * depth * 0.1 * W
            ph = depth * rng.uniform(0.32, 0.48) * H
            pw = max(1.2, ph * 0.3)
            head_r = max(0.6, ph * 0.1)
            head = ((xx - px) ** 2 + (yy - (base - ph + head_r)) ** 2) < head_r ** 2
            torso = (np.abs(xx - px) < pw / 2) & (yy >= base - ph + 1.8 * head_r) & (yy < base - ph * 0.45)
            leg_w = max(0.6, pw * 0.2)
            legs = ((np.abs(xx - (px - pw * 0.2)) < leg_w) | (np.abs(xx - (px + pw * 0.2)) < leg_w)) & (
                yy >= base - ph * 0.47) & (yy < base)
            field = np.empty((height, width, 3), np.float32)
            field[:] = cv.jitter(_CLOTHES[rng.integers(len(_CLOTHES))], 15)
            field[legs] = cv.jitter(_CLOTHES[rng.integers(len(_CLOTHES))], 15)
            field[head] = cv.jitter((215, 175, 145), 25)
            field += 4 * cv.fine[..., None]
            cv.paint(head | torso | legs, PERSON, field)

    gain = rng.uniform(0.75, 1.2) * rng.uniform(0.92, 1.08, 3)
    noise = rng.uniform(3, 8) * rng.standard_normal((height, width, 3))
    image = np.clip(cv.image * gain + noise, 0, 255)
    return np.round(image).astype(np.uint8), cv.label


def synthetic_arrays(num_images, height, width, seed=0, start=0):
    """Scenes `start .. start+num_images-1`: `images uint8 (N, H, W, 3)`, `labels uint8 (N, H, W)`."""
    images = np.empty((num_images, height, width, 3), np.uint8)
    labels = np.empty((num_images, height, width), np.uint8)
    for i in range(num_images):
        images[i], labels[i] = synthetic_scene(height, width, seed, start + i)
    return images, labels


def synthetic_dataset(num_images, height, width, seed=0, cache=True):
    """`tf.data.Dataset` of `(image uint8 (H, W, 3), label uint8 (H, W))` scenes.

    With `cache=True` all scenes are generated once in NumPy up front (memory:
    `num_images * H * W * 4` bytes); with `cache=False` each is generated on the fly with
    `tf.numpy_function` (identical content).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if cache:
        return tf.data.Dataset.from_tensor_slices(synthetic_arrays(num_images, height, width, seed))

    def generate(index):
        return synthetic_scene(height, width, seed, int(index))

    def to_tensors(index):
        image, label = tf.numpy_function(generate, [index], (tf.uint8, tf.uint8))
        image.set_shape((height, width, 3))
        label.set_shape((height, width))
        return image, label

    return tf.data.Dataset.range(num_images).map(to_tensors)


def synthetic_source(num_images, height, width, seed=0, cache=True):
    """`(synthetic_dataset(...), SYNTHETIC_INFO)`, ready for `make_dataset`."""
    return synthetic_dataset(num_images, height, width, seed, cache), SYNTHETIC_INFO
