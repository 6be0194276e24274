"""The embedded default data set: synthetic pedestrians in Market-1501 layout, generated from a seed.

Nothing is downloaded. Each identity is a random draw of attributes from small palettes (shirt / trouser colours,
shirt pattern, sleeves, shorts, body shape, skin, hair, hat, backpack, bag, shoes), so identities share attributes;
a small per-identity colour and shape jitter makes every identity unique. Each camera has its own background,
illumination gain, colour cast, blur, noise, resolution, person scale and viewpoint statistics; every image adds pose
(stride, arm swing), viewpoint (front / back / side, which changes what is visible: logo, backpack), position jitter
and random occluders. Domain ``b`` has fewer, darker, blurrier cameras with stronger casts and a different palette
distribution than domain ``a`` (for cross-domain A->B runs).

Every image is drawn from its own generator seeded by (seed, domain, split, pid, image index), so the bytes do not
depend on generation order, and the same seed gives byte-identical JPEG files. The folder is marked as oskt's by
its ``dataset.json`` manifest (:mod:`oskt.data.ownership`): regenerating never deletes a file oskt did not write.
"""

from __future__ import annotations

import dataclasses
import io as _io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from oskt.config import SynthConfig
from oskt.data.ownership import LEGACY_LISTS, check_owned, complete_manifest, write_owned
from oskt.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["DOMAINS", "GENERATOR_VERSION", "is_complete", "make_synthetic", "render_person", "synthetic_plan"]

GENERATOR_VERSION = 1
_DOMAIN_CODE = {"a": 0, "b": 1}
_SPLIT_CODE = {"train": 0, "test": 1, "distractor": 2}
_CAMERA_CODE = 7

SHIRTS = np.array(
    [
        (200, 40, 40),
        (40, 70, 190),
        (40, 140, 60),
        (220, 200, 50),
        (225, 225, 225),
        (35, 35, 35),
        (128, 128, 128),
        (120, 60, 150),
    ],
    dtype=np.float64,
)  # red, blue, green, yellow, white, black, grey, purple
TROUSERS = np.array(
    [(30, 40, 90), (25, 25, 25), (110, 110, 110), (190, 170, 130), (100, 70, 40), (90, 120, 170)], dtype=np.float64
)  # navy, black, grey, beige, brown, jeans
SKIN = np.array([(240, 205, 180), (210, 160, 120), (160, 110, 75), (100, 65, 45)], dtype=np.float64)
HAIR = np.array([(20, 15, 10), (80, 50, 25), (170, 130, 70), (130, 130, 130), (60, 30, 20)], dtype=np.float64)
SHOES = np.array([(20, 20, 20), (230, 230, 230), (120, 80, 50)], dtype=np.float64)
PATTERNS = ("solid", "hstripes", "vstripes", "twotone", "logo")
VIEWS = ("front", "back", "right", "left")


@dataclass(frozen=True)
class _DomainStyle:
    num_cams: int
    shirt_w: tuple[float, ...]
    trouser_w: tuple[float, ...]
    gain: tuple[float, float]
    cast: float
    blur: tuple[float, float]
    noise: tuple[float, float]
    scale: tuple[float, float]
    lowres: tuple[float, float]
    occlusion: float
    backgrounds: tuple[tuple[int, int, int], ...]


DOMAINS = {
    "a": _DomainStyle(
        num_cams=6,
        shirt_w=(1, 1, 1, 1, 1, 1, 1, 1),
        trouser_w=(1, 1, 1, 1, 1, 1),
        gain=(0.8, 1.15),
        cast=0.15,
        blur=(0.0, 0.8),
        noise=(2.0, 6.0),
        scale=(0.78, 0.95),
        lowres=(0.6, 1.0),
        occlusion=0.2,
        backgrounds=((150, 150, 140), (120, 130, 150), (170, 160, 130), (100, 110, 100), (140, 120, 110)),
    ),
    "b": _DomainStyle(
        num_cams=4,
        shirt_w=(0.5, 1.5, 0.5, 0.3, 1.5, 2.0, 1.5, 0.3),
        trouser_w=(2.0, 2.0, 1.0, 0.3, 0.5, 1.5),
        gain=(0.55, 0.95),
        cast=0.25,
        blur=(0.4, 1.2),
        noise=(4.0, 9.0),
        scale=(0.7, 0.9),
        lowres=(0.5, 0.85),
        occlusion=0.3,
        backgrounds=((90, 95, 110), (70, 80, 70), (120, 110, 100), (60, 60, 75)),
    ),
}


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _pick(rng: np.random.Generator, weights: tuple[float, ...]) -> int:
    w = np.asarray(weights, dtype=np.float64)
    return int(rng.choice(len(w), p=w / w.sum()))


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float) -> np.ndarray:
    return np.clip(colour + rng.uniform(-amount, amount, 3), 0, 255)


def _camera(seed: int, domain: str, cam: int) -> dict[str, Any]:
    st = DOMAINS[domain]
    r = _rng(seed, _DOMAIN_CODE[domain], _CAMERA_CODE, cam)
    wall = _jitter(r, np.asarray(st.backgrounds[int(r.integers(len(st.backgrounds)))], dtype=np.float64), 30)
    return {
        "wall": wall,
        "floor": _jitter(r, wall * r.uniform(0.6, 0.9), 20),
        "horizon": r.uniform(0.45, 0.8),
        "fixtures": [  # fixed scenery (door, window, pillar): position fractions and colour
            (r.uniform(-0.2, 0.9), r.uniform(0.0, 0.5), r.uniform(0.15, 0.5), r.uniform(0.2, 0.6), _jitter(r, wall, 80))
            for _ in range(int(r.integers(1, 4)))
        ],
        "gain": r.uniform(*st.gain),
        "cast": 1.0 + r.uniform(-st.cast, st.cast, 3),
        "blur": r.uniform(*st.blur),
        "noise": r.uniform(*st.noise),
        "scale": r.uniform(*st.scale),
        "lowres": r.uniform(*st.lowres),
        "views": r.dirichlet(np.full(4, 1.5)),
        "occlusion": st.occlusion,
    }


def _identity(rng: np.random.Generator, domain: str) -> dict[str, Any]:
    st = DOMAINS[domain]
    shirt = _pick(rng, st.shirt_w)
    return {
        "shirt": _jitter(rng, SHIRTS[shirt], 25),
        "second": _jitter(rng, SHIRTS[(shirt + int(rng.integers(1, len(SHIRTS)))) % len(SHIRTS)], 25),
        "trousers": _jitter(rng, TROUSERS[_pick(rng, st.trouser_w)], 20),
        "pattern": PATTERNS[_pick(rng, (3, 1, 1, 1, 1))],
        "long_sleeves": bool(rng.random() < 0.5),
        "shorts": bool(rng.random() < 0.2),
        "height": rng.uniform(0.9, 1.0),
        "width": float(rng.choice([0.85, 1.0, 1.15])) * rng.uniform(0.95, 1.05),
        "skin": _jitter(rng, SKIN[int(rng.integers(len(SKIN)))], 10),
        "hair": _jitter(rng, HAIR[int(rng.integers(len(HAIR)))], 10),
        "hat": _jitter(rng, SHIRTS[int(rng.integers(len(SHIRTS)))], 20) if rng.random() < 0.15 else None,
        "backpack": _jitter(rng, TROUSERS[int(rng.integers(len(TROUSERS)))], 30) if rng.random() < 0.35 else None,
        "bag": (_jitter(rng, SHIRTS[int(rng.integers(len(SHIRTS)))], 30), int(rng.choice([-1, 1])))
        if rng.random() < 0.25
        else None,
        "shoes": _jitter(rng, SHOES[int(rng.integers(len(SHOES)))], 15),
    }


def _c(col: np.ndarray) -> tuple[int, int, int]:
    return (int(col[0]), int(col[1]), int(col[2]))


def render_person(
    ident: dict[str, Any],
    cam: dict[str, Any],
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    image_format: str = "JPEG",
) -> bytes:
    """Draw one pedestrian image seen by one camera; returns the encoded file (JPEG quality 90, or PNG).

    Args:
        ident: identity attributes (from the identity generator).
        cam: camera statistics (background, gain, cast, blur, noise, scale, resolution, viewpoint probabilities).
        rng: this image's generator (pose, viewpoint, jitter, occluders, noise).
        height: stored image height.
        width: stored image width.
        image_format: ``JPEG`` (Market-1501, MSMT17 and the synthetic sets) or ``PNG`` (CUHK03-NP).
    """
    # low-resolution cameras: draw small, upsample (loses detail like a distant camera)
    f = cam["lowres"] * rng.uniform(0.9, 1.1)
    h, w = max(16, int(height * min(f, 1.0))), max(8, int(width * min(f, 1.0)))
    img = Image.new("RGB", (w, h), _c(cam["wall"]))
    d = ImageDraw.Draw(img)
    hy = int(h * cam["horizon"])
    d.rectangle([0, hy, w, h], fill=_c(cam["floor"]))
    for fx, fy, fw, fh, col in cam["fixtures"]:
        d.rectangle([fx * w, fy * h, (fx + fw) * w, (fy + fh) * h], fill=_c(col))
    for _ in range(int(rng.integers(0, 3))):  # passing clutter
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(0, 1.0) * h
        d.rectangle(
            [x0, y0, x0 + rng.uniform(0.05, 0.3) * w, y0 + rng.uniform(0.05, 0.3) * h], fill=_c(rng.uniform(30, 220, 3))
        )

    view = VIEWS[int(rng.choice(4, p=cam["views"]))]
    side = view in ("left", "right")
    ph = h * cam["scale"] * ident["height"] * rng.uniform(0.93, 1.05)
    bottom = h * rng.uniform(0.96, 1.0)
    top = bottom - ph
    cx = w / 2 + rng.uniform(-0.08, 0.08) * w
    r = 0.075 * ph
    tw = 0.34 * ph * ident["width"] * (0.6 if side else 1.0) * (width / height * 2)
    sh_y, waist = top + 2 * r + 0.01 * ph, top + 0.52 * ph
    stride = rng.uniform(-1, 1)
    shirt, trousers, skin = _c(ident["shirt"]), _c(ident["trousers"]), _c(ident["skin"])
    facing = 1 if view == "right" else -1

    # backpack behind the body in side views, drawn first
    if ident["backpack"] is not None and side:
        bx = cx - facing * tw * 0.5
        bx0, bx1 = sorted((bx, bx - facing * 0.12 * ph))
        d.rectangle([bx0, sh_y + 0.03 * ph, bx1, waist - 0.04 * ph], fill=_c(ident["backpack"]))
    # legs
    leg_w = max(2, int(0.1 * ph * ident["width"] * (width / height * 2)))
    for sgn in (-1, 1):
        hip = (cx + sgn * tw * 0.22 * (0.3 if side else 1.0), waist)
        dx = (sgn * stride * 0.16 * ph) if side else (sgn * 0.02 * ph + stride * 0.03 * ph)
        foot = (hip[0] + dx, bottom - 0.03 * ph)
        knee = (hip[0] + dx * 0.5, (waist + bottom) / 2)
        d.line([hip, foot], fill=trousers, width=leg_w)
        if ident["shorts"]:
            d.line([knee, foot], fill=skin, width=max(1, leg_w - 1))
        d.ellipse(
            [foot[0] - leg_w * 0.7, foot[1] - 0.02 * ph, foot[0] + leg_w * 0.9, foot[1] + 0.03 * ph],
            fill=_c(ident["shoes"]),
        )
    # torso (trapezoid) and pattern
    d.polygon([(cx - tw / 2, sh_y), (cx + tw / 2, sh_y), (cx + tw * 0.42, waist), (cx - tw * 0.42, waist)], fill=shirt)
    second = _c(ident["second"])
    pat = ident["pattern"]
    if pat == "hstripes":
        step = max(2.0, 0.06 * ph)
        y = sh_y + step / 2
        while y < waist - 1:
            d.rectangle([cx - tw * 0.45, y, cx + tw * 0.45, y + step / 2], fill=second)
            y += step
    elif pat == "vstripes" and not side:
        step = max(2.0, tw / 5)
        x = cx - tw * 0.42
        while x < cx + tw * 0.42:
            d.rectangle([x, sh_y, x + step / 2, waist], fill=second)
            x += step
    elif pat == "twotone":
        d.rectangle([cx - tw * 0.44, (sh_y + waist) / 2, cx + tw * 0.44, waist], fill=second)
    elif pat == "logo" and view == "front":
        s = 0.08 * ph
        d.rectangle([cx - s, sh_y + 0.05 * ph, cx + s, sh_y + 0.05 * ph + 1.6 * s], fill=second)
    # backpack on the back (back view) or straps (front view)
    if ident["backpack"] is not None and view == "back":
        d.rectangle([cx - tw * 0.33, sh_y + 0.03 * ph, cx + tw * 0.33, waist - 0.04 * ph], fill=_c(ident["backpack"]))
    elif ident["backpack"] is not None and view == "front":
        for sgn in (-1, 1):
            d.line(
                [(cx + sgn * tw * 0.3, sh_y), (cx + sgn * tw * 0.25, waist - 0.05 * ph)],
                fill=_c(ident["backpack"]),
                width=max(1, int(0.025 * ph)),
            )
    # arms
    arm_w = max(2, int(0.07 * ph * (width / height * 2)))
    arm_len = 0.33 * ph
    for sgn in (-1, 1) if not side else (facing,):
        swing = stride * (0.6 if side else 0.15) * (sgn if not side else 1)
        sx = cx + sgn * tw * (0.5 if not side else 0.0)
        hand = (sx + np.sin(swing) * arm_len + (sgn * 0.03 * ph if not side else 0), sh_y + np.cos(swing) * arm_len)
        elbow = ((sx + hand[0]) / 2, (sh_y + hand[1]) / 2)
        d.line([(sx, sh_y + 0.02 * ph), hand], fill=shirt if ident["long_sleeves"] else skin, width=arm_w)
        if not ident["long_sleeves"]:
            d.line([(sx, sh_y + 0.02 * ph), elbow], fill=shirt, width=arm_w)
    # bag at the hip
    if ident["bag"] is not None:
        col, bside = ident["bag"]
        bside = bside * (-1 if view == "back" else 1)
        bx = cx + bside * tw * (0.6 if not side else 0.3)
        d.rectangle([bx - 0.06 * ph, waist - 0.06 * ph, bx + 0.06 * ph, waist + 0.08 * ph], fill=_c(col))
    # head: face visible from the front and sides, hair from the back; optional hat
    hc = (cx + (facing * 0.01 * ph if side else 0), top + r)
    d.ellipse(
        [hc[0] - r * 0.85, hc[1] - r, hc[0] + r * 0.85, hc[1] + r], fill=_c(ident["hair"]) if view == "back" else skin
    )
    if view != "back":
        d.chord([hc[0] - r * 0.85, hc[1] - r, hc[0] + r * 0.85, hc[1] + r], 180, 360, fill=_c(ident["hair"]))
    if ident["hat"] is not None:
        d.rectangle([hc[0] - r, hc[1] - r * 1.1, hc[0] + r, hc[1] - r * 0.35], fill=_c(ident["hat"]))
    # occluder: a pole, a bench or another passer-by in front
    if rng.random() < cam["occlusion"]:
        kind = int(rng.integers(3))
        col = _c(rng.uniform(20, 230, 3))
        if kind == 0:
            x0 = rng.uniform(0.1, 0.8) * w
            d.rectangle([x0, 0, x0 + rng.uniform(0.08, 0.2) * w, h], fill=col)
        elif kind == 1:
            d.rectangle([0, h * rng.uniform(0.6, 0.8), w, h], fill=col)
        else:
            x0 = rng.choice([-0.3, 0.7]) * w
            d.ellipse([x0, h * 0.2, x0 + 0.6 * w, h * 1.2], fill=col)

    if (w, h) != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    gain = cam["gain"] * rng.uniform(0.85, 1.15)
    arr = arr * (gain * cam["cast"]).astype(np.float32)
    arr += rng.normal(0.0, cam["noise"], arr.shape).astype(np.float32)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    radius = cam["blur"] * rng.uniform(0.7, 1.3)
    if radius > 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    if rng.random() < 0.5:  # people walk both ways: mirror half the images
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    buf = _io.BytesIO()
    if image_format == "JPEG":
        img.save(buf, format="JPEG", quality=90)
    else:
        img.save(buf, format=image_format)
    return buf.getvalue()


def synthetic_plan(synth: SynthConfig, domain: str) -> list[tuple[str, str, int, int, int, int]]:
    """Every image to generate as ``(folder, file name, split code, pid, camera, image index)``.

    Identities 1..train_ids train, the next test_ids test (disjoint). Each identity appears in 2-4 cameras with at
    least two images per camera; for a test identity, one image per camera in about half of its cameras (at least
    one) is a query, the rest gallery. A few pid-0 distractors go to the gallery.
    """
    if domain not in DOMAINS:
        raise DataError(f"unknown synthetic domain {domain!r}; expected one of {sorted(DOMAINS)}")
    if synth.train_ids + synth.test_ids > 9999:
        raise DataError("the synthetic layout has 4-digit pids: train_ids + test_ids must be <= 9999")
    st = DOMAINS[domain]
    dcode = _DOMAIN_CODE[domain]
    plan = []
    for split, first, n in (("train", 1, synth.train_ids), ("test", synth.train_ids + 1, synth.test_ids)):
        scode = _SPLIT_CODE[split]
        for pid in range(first, first + n):
            r = _rng(synth.seed, dcode, scode, pid, 999_999)  # camera assignment only
            k = int(min(r.integers(2, 5), st.num_cams, synth.images_per_id // 2))
            cams = [int(c) for c in r.permutation(st.num_cams)[:k]]
            query_cams = set(cams[: max(1, k // 2)]) if split == "test" else set()
            for idx in range(synth.images_per_id):
                cam = cams[idx % k]
                name = f"{pid:04d}_c{cam + 1}s1_{idx:06d}_00.jpg"
                if split == "train":
                    folder = "bounding_box_train"
                else:
                    folder = "query" if (cam in query_cams and idx < k) else "bounding_box_test"
                plan.append((folder, name, scode, pid, cam, idx))
    for k in range(max(2, synth.test_ids // 5)):
        cam = int(_rng(synth.seed, dcode, _SPLIT_CODE["distractor"], k).integers(st.num_cams))
        plan.append(("bounding_box_test", f"0000_c{cam + 1}s1_{k:06d}_00.jpg", _SPLIT_CODE["distractor"], 0, cam, k))
    return plan


def _render(
    synth: SynthConfig, domain: str, cams: list[dict[str, Any]], scode: int, pid: int, cam: int, idx: int
) -> bytes:
    dcode = _DOMAIN_CODE[domain]
    # identity generator: per (split, pid); distractors get a fresh identity per image
    ident = _identity(_rng(synth.seed, dcode, scode, pid, 0 if scode != 2 else idx + 1), domain)
    return render_person(ident, cams[cam], _rng(synth.seed, dcode, scode, pid, idx + 1, 1), synth.height, synth.width)


def _manifest(synth: SynthConfig, domain: str, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "generator": "oskt.data.synthetic",
        "version": GENERATOR_VERSION,
        "domain": domain,
        "config": dataclasses.asdict(synth),
        "layout": "market1501",
        "counts": counts,
    }


def is_complete(path: str, synth: SynthConfig, domain: str) -> bool:
    """True when ``path`` holds a finished data set generated with exactly this config and domain."""
    m = complete_manifest(path)
    return (
        m is not None
        and m.get("generator") == "oskt.data.synthetic"
        and m.get("version") == GENERATOR_VERSION
        and m.get("domain") == domain
        and m.get("config") == dataclasses.asdict(synth)
    )


def make_synthetic(root_or_path: str, synth: SynthConfig, domain: str, *, force: bool = False) -> str:
    """Generate the synthetic data set of ``domain`` at ``root_or_path`` (Market-1501 layout); returns the path.

    A folder whose ``dataset.json`` manifest records the same generator config is left as it is (unless
    ``force``). Otherwise the folder must be missing, empty or an oskt data set holding nothing else
    (:func:`oskt.data.ownership.check_owned`: a folder with a file oskt did not write is a DataError naming it,
    and nothing is written or deleted); the new set is written beside the old one and swapped in
    (:func:`oskt.data.ownership.write_owned`), so an interrupted run never looks complete and never loses the old set.

    Args:
        root_or_path: the data set folder (local or ``s3://``).
        synth: generator settings (ids, images per id, stored size, seed).
        domain: ``a`` or ``b``.
        force: regenerate even if a complete, identical data set is there.
    """
    path = str(root_or_path).rstrip("/")
    if not force and is_complete(path, synth, domain):
        log.info("synthetic data set at %s is complete and up to date", path)
        return path
    plan = synthetic_plan(synth, domain)  # validates the domain before anything is touched
    check_owned(path)
    cams = [_camera(synth.seed, domain, c) for c in range(DOMAINS[domain].num_cams)]
    counts: dict[str, int] = {}
    for folder, *_ in plan:
        counts[folder] = counts.get(folder, 0) + 1
    counts["train_ids"], counts["test_ids"] = synth.train_ids, synth.test_ids
    counts["distractors"] = sum(1 for e in plan if e[3] == 0)
    files = (
        (f"{folder}/{name}", _render(synth, domain, cams, scode, pid, cam, idx))
        for folder, name, scode, pid, cam, idx in plan
    )
    write_owned(path, _manifest(synth, domain, counts), files)
    log.info("generated synthetic domain %s at %s: %s", domain, path, counts)
    return path


def _legacy_files(manifest: dict[str, Any]) -> set[str]:
    """The files of a manifest of the first generator (version 1), which wrote no list: they follow from the config
    it records."""
    if manifest.get("version") != 1:
        return set()
    try:
        plan = synthetic_plan(SynthConfig(**manifest["config"]), manifest["domain"])
    except (KeyError, TypeError, ValueError, DataError):
        return set()
    return {f"{folder}/{name}" for folder, name, *_ in plan}


LEGACY_LISTS["oskt.data.synthetic"] = _legacy_files
