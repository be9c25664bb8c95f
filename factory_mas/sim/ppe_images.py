"""Synthetic camera frames of one worker, with or without each piece of PPE.

Real labelled PPE footage is not redistributable, so the CNN learns from renders: a front
view of a worker (head, torso, arms, legs, feet) wearing or lacking a hard hat, safety
boots, long work trousers and a shirt, in varied poses, colours, light and backgrounds.
What stands in for a missing item is what a camera would see instead: hair or a knit cap
instead of a hard hat, bare feet or low sneakers instead of boots, shorts and bare legs
instead of trousers, a bare torso instead of a shirt. Hard-hat and hi-vis colours also
appear in the background clutter, so the model has to learn where on the body they are.

Scenes without anyone in them teach the model's `person` output: the same backdrops with
what fools a PPE check without a person, such as a cup, a box, a hard hat on a shelf or
boots on the floor. Workers are drawn from 30 % to 100 % of full height anywhere in the
frame, as a camera sees them near and far.

Everything is drawn from one numpy Generator: the same seed gives the same pixels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..messages import PPE_ITEMS as ITEMS
from ..ml.images import to_model_input

PERSON = "person"
# The model's outputs, in order: one per item, then whether anyone is in the frame.
LABELS: tuple[str, ...] = (*ITEMS, PERSON)
# Worker heights relative to a full-frame figure: training draws from this range.
SCALES = (0.3, 1.0)

Color = tuple[int, int, int]

SKIN: tuple[Color, ...] = (
    (255, 219, 172),
    (241, 194, 125),
    (224, 172, 105),
    (198, 134, 66),
    (141, 85, 36),
    (92, 58, 32),
    (235, 200, 180),
)
# Darker than any hard hat: blond or grey hair under a warm colour cast is a yellow or
# white dome at 64 pixels, and the brim alone is too thin to tell them apart.
HAIR: tuple[Color, ...] = ((20, 16, 14), (60, 40, 25), (100, 70, 40), (140, 105, 60), (85, 85, 85))
HELMET: tuple[Color, ...] = (
    (245, 200, 20),
    (240, 240, 235),
    (245, 120, 20),
    (205, 30, 30),
    (30, 80, 200),
)
# Knit caps in colours no hard hat comes in: a cap is not a helmet whatever its colour, but
# at 64 pixels a red cap and a red hard hat differ by little more than the brim.
CAP: tuple[Color, ...] = ((30, 30, 30), (40, 70, 40), (90, 90, 95), (80, 55, 40))
HI_VIS: tuple[Color, ...] = ((215, 235, 40), (250, 130, 20), (240, 240, 60))
# No skin-like tones: a beige shirt on a light-skinned worker is a label nobody can check.
SHIRT: tuple[Color, ...] = (
    (30, 45, 100),
    (120, 120, 125),
    (235, 235, 235),
    (170, 30, 35),
    (40, 110, 60),
    (25, 25, 28),
    (120, 170, 220),
    (100, 30, 60),
)
TROUSERS: tuple[Color, ...] = (
    (30, 40, 80),
    (60, 60, 65),
    (25, 25, 25),
    (85, 90, 50),
    (60, 80, 120),
    (110, 110, 115),
    (240, 120, 20),
)
BOOTS: tuple[Color, ...] = ((20, 20, 20), (70, 45, 25), (150, 100, 45), (35, 35, 40))
SNEAKERS: tuple[Color, ...] = (
    (240, 240, 240),
    (150, 150, 150),
    (200, 40, 40),
    (40, 70, 180),
    (25, 25, 25),
)
REFLECTIVE: Color = (205, 205, 200)
CLUTTER: tuple[Color, ...] = (
    HELMET + HI_VIS + ((90, 90, 90), (60, 90, 120), (130, 100, 60), (40, 40, 40))
)
BACKDROP: tuple[Color, ...] = (
    (150, 150, 150),
    (90, 95, 100),
    (180, 175, 160),
    (70, 90, 110),
    (110, 120, 90),
    (200, 200, 205),
    (60, 55, 50),
    (140, 120, 100),
)
# Drawn at twice the output size and scaled down, which anti-aliases the shapes the way a
# camera's optics blur real edges.
SUPERSAMPLE = 2


def _pick(rng: np.random.Generator, options: Sequence[Color]) -> Color:
    return options[int(rng.integers(len(options)))]


def _jitter(rng: np.random.Generator, color: Color, amount: int = 12) -> Color:
    (r, g, b), (dr, dg, db) = color, rng.integers(-amount, amount + 1, 3)
    return _channel(r + int(dr)), _channel(g + int(dg)), _channel(b + int(db))


def _shade(color: Color, factor: float) -> Color:
    r, g, b = color
    return _channel(r * factor), _channel(g * factor), _channel(b * factor)


def _channel(value: float) -> int:
    return min(255, max(0, int(value)))


def _background(rng: np.random.Generator, side: int) -> Image.Image:
    top, bottom = np.array(_pick(rng, BACKDROP), float), np.array(_pick(rng, BACKDROP), float)
    ramp = np.linspace(0.0, 1.0, side)[:, None, None]
    grid = top + (bottom - top) * ramp
    pixels = np.broadcast_to(grid, (side, side, 3))
    if rng.random() < 0.5:
        pixels = pixels.transpose(1, 0, 2)
    image = Image.fromarray(np.ascontiguousarray(pixels).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.6:
        horizon = int(side * rng.uniform(0.55, 0.85))
        draw.rectangle((0, horizon, side, side), fill=_jitter(rng, _pick(rng, BACKDROP), 20))
        if rng.random() < 0.2:
            # Hazard tape on the floor, right where the boots are.
            y = int(side * rng.uniform(0.85, 0.97))
            for x in range(-side, side, side // 8):
                draw.polygon(
                    [
                        (x, y),
                        (x + side // 16, y),
                        (x + side // 8, y + side // 30),
                        (x + side // 16, y + side // 30),
                    ],
                    fill=(235, 200, 20),
                )
    for _ in range(int(rng.integers(0, 6))):
        color = _jitter(rng, _pick(rng, CLUTTER))
        x0, y0 = rng.uniform(-0.1, 1.0, 2) * side
        w, h = rng.uniform(0.05, 0.4, 2) * side
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=color)
        elif kind == 1:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=color)
        else:
            draw.line(
                (x0, y0, x0 + w, y0 + h * rng.choice([-1, 1])),
                fill=color,
                width=max(2, int(side * 0.02)),
            )
    return image


def _limb(draw: ImageDraw.ImageDraw, a, b, width: float, color: Color) -> None:
    """A thick segment with round ends, like an arm or a leg."""
    w = max(1, round(width))
    draw.line((a, b), fill=color, width=w)
    r = width / 2
    for x, y in (a, b):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=color)


def _point(origin, length: float, angle_deg: float) -> tuple[float, float]:
    """The end of a segment of `length` hanging from `origin`, turned by the angle
    (0 = straight down, positive = towards +x)."""
    a = math.radians(angle_deg)
    return origin[0] + length * math.sin(a), origin[1] + length * math.cos(a)


def _along(a, b, t: float) -> tuple[float, float]:
    return a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t


@dataclass(frozen=True)
class _Body:
    """Where the parts of one figure go, in layer pixels."""

    cx: float
    floor: float
    height: float
    skin: Color
    head: tuple[float, float]
    head_r: float
    shoulder_y: float
    hip_y: float
    shoulder_w: float
    hip_w: float
    leg_w: float
    arm_w: float
    hips: list[tuple[float, float]]
    knees: list[tuple[float, float]]
    ankles: list[tuple[float, float]]

    def at(self, fraction: float) -> float:
        """A length as a fraction of the figure's height."""
        return fraction * self.height


def _pose(rng: np.random.Generator, side: int, scale: float) -> _Body:
    height = side * rng.uniform(0.72, 0.9) * scale
    girth = rng.uniform(0.85, 1.2)
    # A smaller (farther) worker can stand further to the side and higher in the frame.
    margin = 0.08 + 0.24 * scale
    cx = side * rng.uniform(margin, 1.0 - margin)
    floor = rng.uniform(min(0.93 * side, max(1.02 * height, 0.55 * side)), 0.985 * side)
    skin = _jitter(rng, _pick(rng, SKIN), 8)
    head_r = 0.072 * height
    head = (cx + rng.uniform(-0.01, 0.01) * height, floor - 0.95 * height + head_r)
    shoulder_y = head[1] + head_r + 0.035 * height
    hip_y = shoulder_y + 0.3 * height
    hip_w = 0.085 * height * girth
    spread = rng.uniform(0.02, 0.11) * height
    hips = [(cx - hip_w * 0.5, hip_y), (cx + hip_w * 0.5, hip_y)]
    ankle_y = floor - 0.035 * height
    ankles = [(cx - hip_w * 0.5 - spread, ankle_y), (cx + hip_w * 0.5 + spread, ankle_y)]
    knees = [_along(h, a, 0.5) for h, a in zip(hips, ankles, strict=True)]
    knees = [(x + rng.uniform(-0.02, 0.02) * height, y) for x, y in knees]
    return _Body(
        cx=cx,
        floor=floor,
        height=height,
        skin=skin,
        head=head,
        head_r=head_r,
        shoulder_y=shoulder_y,
        hip_y=hip_y,
        shoulder_w=0.12 * height * girth,
        hip_w=hip_w,
        leg_w=0.075 * height * girth,
        arm_w=0.055 * height * girth,
        hips=hips,
        knees=knees,
        ankles=ankles,
    )


def _legs(d: ImageDraw.ImageDraw, rng: np.random.Generator, b: _Body, pants: bool) -> None:
    for hip, knee, ankle in zip(b.hips, b.knees, b.ankles, strict=True):
        _limb(d, hip, knee, b.leg_w, b.skin)
        _limb(d, knee, ankle, b.leg_w * 0.85, b.skin)
    crotch = b.at(0.08) if pants else b.at(0.06)
    waist = [(b.cx - b.hip_w, b.hip_y - b.at(0.02)), (b.cx + b.hip_w, b.hip_y - b.at(0.02))]
    if pants:
        base = _pick(rng, TROUSERS)
        trousers = _jitter(rng, base)
        d.polygon([*waist, (b.cx, b.hip_y + crotch)], fill=trousers)
        for hip, knee, ankle in zip(b.hips, b.knees, b.ankles, strict=True):
            _limb(d, hip, knee, b.leg_w * 1.15, trousers)
            _limb(d, knee, _along(knee, ankle, 1.02), b.leg_w * 1.05, trousers)
            # Hi-vis trousers always carry their reflective band, work trousers sometimes.
            if rng.random() < 0.3 or base == TROUSERS[-1]:
                band = _along(knee, ankle, 0.55)
                _limb(d, band, _along(knee, ankle, 0.7), b.leg_w * 1.1, REFLECTIVE)
        return
    # Shorts or briefs: the bare shins are what tells "no work trousers".
    shorts = _jitter(rng, _pick(rng, TROUSERS + SHIRT))
    reach = rng.uniform(0.15, 0.8) if rng.random() < 0.8 else 0.08
    d.polygon([*waist, (b.cx, b.hip_y + crotch)], fill=shorts)
    for hip, knee in zip(b.hips, b.knees, strict=True):
        _limb(d, hip, _along(hip, knee, reach), b.leg_w * 1.2, shorts)


def _feet(d: ImageDraw.ImageDraw, rng: np.random.Generator, b: _Body, boots: bool) -> None:
    w = b.leg_w
    for i, (ax, ay) in enumerate(b.ankles):
        # Toes point outwards, now and then both the same way (a step).
        toe = 1 if (i == 1) != (rng.random() < 0.15) else -1
        if boots:
            color = _jitter(rng, _pick(rng, BOOTS), 8)
            # A shaft above the ankle and a toe cap: what sets a boot apart from a shoe.
            shaft = (ax - w * 0.65, ay - b.at(0.075), ax + w * 0.65, b.floor)
            d.rounded_rectangle(shaft, radius=w * 0.2, fill=color)
            toe_cap = (ax + toe * w * 0.1 - w * 0.75, b.floor - b.at(0.045))
            d.ellipse((*toe_cap, ax + toe * w * 0.9 + w * 0.25, b.floor), fill=color)
            sole = (ax - w * 0.75, b.floor - b.at(0.012), ax + w * 0.85, b.floor)
            d.rectangle(sole, fill=_shade(color, 0.5))
        elif rng.random() < 0.6:
            color = _jitter(rng, _pick(rng, SNEAKERS), 8)
            shoe = (ax - w * 0.55 + toe * w * 0.1, b.floor - b.at(0.03))
            d.ellipse((*shoe, ax + w * 0.55 + toe * w * 0.4, b.floor), fill=color)
            sole = (ax - w * 0.5, b.floor - b.at(0.008), ax + w * 0.6, b.floor)
            d.rectangle(sole, fill=(235, 235, 235))
        else:
            foot = (ax - w * 0.4 + toe * w * 0.1, b.floor - b.at(0.028))
            d.ellipse((*foot, ax + w * 0.4 + toe * w * 0.35, b.floor), fill=_shade(b.skin, 0.95))


def _upper_body(d: ImageDraw.ImageDraw, rng: np.random.Generator, b: _Body, shirt: bool) -> None:
    torso = [
        (b.cx - b.shoulder_w, b.shoulder_y),
        (b.cx + b.shoulder_w, b.shoulder_y),
        (b.cx + b.hip_w * 1.05, b.hip_y + b.at(0.01)),
        (b.cx - b.hip_w * 1.05, b.hip_y + b.at(0.01)),
    ]
    color = hi_vis = None
    if shirt:
        hi_vis = rng.random() < 0.5
        color = _jitter(rng, _pick(rng, HI_VIS if hi_vis else SHIRT), 10)
    d.polygon(torso, fill=color or b.skin)
    if color is None:
        # Collarbone and navel shading, so a bare torso reads as skin, not a tan shirt.
        nx, ny = b.cx, b.hip_y - b.at(0.07)
        d.ellipse((nx - 1.5, ny - 1.5, nx + 1.5, ny + 1.5), fill=_shade(b.skin, 0.7))
        collar_y = b.shoulder_y + b.at(0.03)
        d.line(
            ((b.cx - b.shoulder_w * 0.6, collar_y), (b.cx + b.shoulder_w * 0.6, collar_y)),
            fill=_shade(b.skin, 0.85),
            width=max(1, round(b.height / 80)),
        )
    elif hi_vis:
        for t in (0.45, 0.75):
            y = b.shoulder_y + (b.hip_y - b.shoulder_y) * t
            stripe = (b.cx - b.shoulder_w * 0.98, y, b.cx + b.shoulder_w * 0.98, y + b.at(0.028))
            d.rectangle(stripe, fill=REFLECTIVE)
        for sx in (-0.45, 0.45):
            x = b.cx + sx * b.shoulder_w
            d.rectangle((x - b.at(0.012), b.shoulder_y, x + b.at(0.012), b.hip_y), fill=REFLECTIVE)
    sleeve = rng.uniform(0.3, 1.0)
    for sign in (-1, 1):
        shoulder = (b.cx + sign * b.shoulder_w * 0.92, b.shoulder_y + b.arm_w * 0.4)
        # Mostly hanging arms, now and then one raised (pointing, reaching).
        upper = rng.uniform(8, 35) if rng.random() < 0.85 else rng.uniform(35, 120)
        elbow = _point(shoulder, b.at(0.17), sign * upper)
        wrist = _point(elbow, b.at(0.16), sign * (upper + rng.uniform(-25, 40)))
        _limb(d, shoulder, elbow, b.arm_w, b.skin)
        _limb(d, elbow, wrist, b.arm_w * 0.85, b.skin)
        if color is not None:
            cuff = elbow if sleeve < 0.5 else _along(elbow, wrist, (sleeve - 0.5) * 1.8)
            _limb(d, shoulder, cuff, b.arm_w * 1.1, color)
        r = b.arm_w * 0.55
        d.ellipse((wrist[0] - r, wrist[1] - r, wrist[0] + r, wrist[1] + r), fill=b.skin)


def _hard_hat(
    d: ImageDraw.ImageDraw, rng: np.random.Generator, hx: float, hy: float, r: float
) -> None:
    """A hard hat over a head of radius r centred at (hx, hy): wider than the head and
    with a brim, where hair and caps hug the skull."""
    color = _jitter(rng, _pick(rng, HELMET), 8)
    d.chord((hx - r * 1.25, hy - r * 1.6, hx + r * 1.25, hy + r * 0.8), 180, 360, fill=color)
    brim_y = hy - r * 0.35
    brim = (hx - r * 1.6, brim_y - r * 0.16, hx + r * 1.6, brim_y + r * 0.18)
    d.rounded_rectangle(brim, radius=r * 0.1, fill=_shade(color, 0.92))
    d.line(
        ((hx, hy - r * 1.55), (hx, brim_y - r * 0.2)),
        fill=_shade(color, 0.8),
        width=max(1, int(r * 0.18)),
    )


def _distractor(d: ImageDraw.ImageDraw, rng: np.random.Generator, side: int) -> None:
    """One thing a PPE check sees without a person: a cup, a box, a hard hat on a shelf,
    boots on the floor or a hi-vis vest on a hook, at a random size and place."""
    s = side * rng.uniform(0.12, 0.45)
    x, y = rng.uniform(0.05, 0.95) * side, rng.uniform(0.35, 0.95) * side
    kind = int(rng.integers(5))
    if kind == 0:  # a cup: a body, a rim and a handle
        color = _jitter(rng, _pick(rng, HELMET + SHIRT), 10)
        d.ellipse((x + s * 0.3, y - s * 0.75, x + s * 0.7, y - s * 0.25), outline=color, width=3)
        d.rectangle((x - s * 0.4, y - s, x + s * 0.4, y), fill=color)
        d.ellipse((x - s * 0.4, y - s * 1.1, x + s * 0.4, y - s * 0.9), fill=_shade(color, 0.6))
    elif kind == 1:  # a cardboard box with tape
        color = _jitter(rng, (150, 110, 60), 20)
        d.rectangle((x - s * 0.6, y - s, x + s * 0.6, y), fill=color)
        d.rectangle((x - s * 0.08, y - s, x + s * 0.08, y), fill=_shade(color, 1.25))
    elif kind == 2:  # a hard hat on a shelf
        d.rectangle((x - s, y, x + s, y + s * 0.08), fill=_jitter(rng, (110, 90, 70), 20))
        _hard_hat(d, rng, x, y - s * 0.1, s * 0.35)
    elif kind == 3:  # a pair of boots on the floor
        color = _jitter(rng, _pick(rng, BOOTS), 8)
        for dx in (-0.3, 0.3):
            d.rounded_rectangle(
                (x + dx * s - s * 0.12, y - s * 0.45, x + dx * s + s * 0.12, y), 2, fill=color
            )
            d.ellipse((x + dx * s - s * 0.12, y - s * 0.15, x + dx * s + s * 0.3, y), fill=color)
    else:  # a hi-vis vest on a hook
        color = _jitter(rng, _pick(rng, HI_VIS), 10)
        d.polygon(
            [(x - s * 0.4, y - s), (x + s * 0.4, y - s), (x + s * 0.45, y), (x - s * 0.45, y)],
            fill=color,
        )
        d.rectangle((x - s * 0.42, y - s * 0.45, x + s * 0.42, y - s * 0.37), fill=REFLECTIVE)


def _head(d: ImageDraw.ImageDraw, rng: np.random.Generator, b: _Body, helmet: bool) -> None:
    hx, hy = b.head
    r = b.head_r
    _limb(d, (b.cx, hy + r * 0.6), (b.cx, b.shoulder_y), r * 0.8, b.skin)
    d.ellipse((hx - r * 0.9, hy - r, hx + r * 0.9, hy + r), fill=b.skin)
    eye = max(1.0, r * 0.12)
    for ex in (-0.35, 0.35):
        d.ellipse((hx + ex * r - eye, hy - eye, hx + ex * r + eye, hy + eye), fill=(30, 25, 25))
    if helmet:
        _hard_hat(d, rng, hx, hy, r)
        return
    style = rng.random()
    if style < 0.7:
        hair = (hx - r * 0.95, hy - r * 1.12, hx + r * 0.95, hy + r * 0.5)
        d.chord(hair, 180, 360, fill=_pick(rng, HAIR))
    elif style < 0.85:
        cap = (hx - r * 0.98, hy - r * 1.2, hx + r * 0.98, hy + r * 0.3)
        d.chord(cap, 180, 360, fill=_jitter(rng, _pick(rng, CAP)))


def _worker(
    rng: np.random.Generator, side: int, worn: dict[str, bool], scale: float
) -> Image.Image:
    """The figure on a transparent layer, leaning a little; feet near the bottom."""
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    body = _pose(rng, side, scale)
    _legs(d, rng, body, worn["pants"])
    _feet(d, rng, body, worn["boots"])
    _upper_body(d, rng, body, worn["shirt"])
    _head(d, rng, body, worn["helmet"])

    # Only the figure's box is turned: rotating the whole layer costs most of a render.
    box = layer.getbbox()
    assert box is not None  # the figure was just drawn on the layer
    pad = int(body.height * 0.2)
    left, upper = max(0, box[0] - pad), max(0, box[1] - pad)
    region = layer.crop((left, upper, min(side, box[2] + pad), min(side, box[3] + pad)))
    lean = rng.uniform(-9, 9)
    turned = region.rotate(
        lean, resample=Image.Resampling.BILINEAR, center=(body.cx - left, body.floor - upper)
    )
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    layer.paste(turned, (left, upper))
    return layer


def _camera(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    """Light, colour cast, sensor noise, now and then focus blur and JPEG artefacts."""
    image = Image.fromarray(pixels)
    if rng.random() < 0.2:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0)))
    x = np.asarray(image, np.float32) / 255.0
    gain = rng.uniform(0.85, 1.15, 3) * rng.uniform(0.6, 1.3)
    contrast = rng.uniform(0.7, 1.2)
    x = (x - x.mean()) * contrast + x.mean()
    x = np.clip(x * gain, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    x = x * 255.0 + rng.normal(0.0, rng.uniform(0.0, 8.0), x.shape)
    out = np.clip(x, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        buffer = io.BytesIO()
        Image.fromarray(out).save(buffer, "JPEG", quality=int(rng.integers(40, 90)))
        out = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def render_worker(
    rng: np.random.Generator, worn: Sequence[bool], size: int = 64, scale: float = 1.0
) -> np.ndarray:
    """One frame, RGB uint8 [size, size, 3]; `worn` follows ITEMS (helmet, boots, pants,
    shirt); `scale` is the worker's height relative to a full-frame figure."""
    return render_scene(rng, worn, size, scale)


def render_empty(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A frame with nobody in it, often with a distractor or two."""
    return render_scene(rng, None, size)


def render_scene(
    rng: np.random.Generator,
    worn: Sequence[bool] | None,
    size: int = 64,
    scale: float = 1.0,
    distractors: int | None = None,
) -> np.ndarray:
    """A frame with a worker wearing `worn` (None: nobody) and `distractors` objects (None:
    zero to two, drawn at random)."""
    side = size * SUPERSAMPLE
    scene = _background(rng, side)
    count = int(rng.integers(0, 3)) if distractors is None else distractors
    draw = ImageDraw.Draw(scene)
    for _ in range(count):
        _distractor(draw, rng, side)
    if worn is not None:
        figure = _worker(rng, side, dict(zip(ITEMS, worn, strict=True)), scale)
        scene.paste(figure, (0, 0), figure)
    return _camera(rng, to_model_input(scene, (size, size)))


def render_set(
    n: int,
    seed: int,
    size: int = 64,
    empty_share: float = 0.0,
    scales: tuple[float, float] = (1.0, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """n frames and their labels [n, len(LABELS)]: 1 = worn (items) or present (person).
    A share `empty_share` of the frames has nobody in it; their item labels are NaN (not
    applicable, left out of the items' loss). Workers' scales are drawn from `scales`.

    Each item is worn with even odds, independently of the others. On a real site most
    workers wear everything, but a model trained on that learns to infer the helmet from
    the boots and the shirt, and passes exactly the worker who forgot only the helmet.
    """
    rng = np.random.default_rng(seed)
    worn = rng.random((n, len(ITEMS))) < 0.5
    person = rng.random(n) >= empty_share
    scale = rng.uniform(*scales, n)
    images = np.stack(
        [
            render_scene(rng, row if present else None, size, s)
            for row, present, s in zip(worn, person, scale, strict=True)
        ]
    )
    labels = np.concatenate([worn, person[:, None]], axis=1).astype(np.float32)
    labels[~person, : len(ITEMS)] = np.nan
    return images, labels
