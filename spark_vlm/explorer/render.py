"""Pictures for the explorer page: the image, a heatmap laid over it, or boxes over the objects (the oracle's
"patches" are object tokens), each a PNG data URL the page shows as it is."""
from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

DISPLAY = 256  # pixels per side of every picture on the page


def data_url(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def enlarged(image: np.ndarray) -> Image.Image:
    """The uint8 [H, W, 3] image at the display size (nearest: the scenes are small and crisp)."""
    return Image.fromarray(image).resize((DISPLAY, DISPLAY), Image.NEAREST)


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> str:
    """`heat` [h, w] (e.g. a patch grid) upsampled bilinearly, stretched to its own min..max (so the colours show
    where a map is highest, not how peaked it is), coloured (inferno) and blended over the image."""
    heat = np.asarray(heat, np.float32)
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)
    field = Image.fromarray(heat).resize((DISPLAY, DISPLAY), Image.BILINEAR)
    colour = colormaps["inferno"](np.clip(np.asarray(field), 0.0, 1.0))[..., :3] * 255
    base = np.asarray(enlarged(image), np.float32)
    return data_url((base * (1 - alpha) + colour * alpha).astype(np.uint8))


def box_overlay(image: np.ndarray, boxes: list[list[float]], weights: list[float], background: float) -> str:
    """Per object token: its COCO box [x, y, w, h] (image pixels) filled in proportion to its attribution (share
    of the largest), labelled with the value; the background token's value is written in the corner."""
    scale = DISPLAY / image.shape[1]
    canvas = enlarged(image).convert("RGBA")
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    top = max([*weights, background, 1e-12])
    for (x, y, w, h), value in zip(boxes, weights):
        box = [x * scale, y * scale, (x + w) * scale - 1, (y + h) * scale - 1]
        draw.rectangle(box, fill=(255, 200, 0, int(170 * value / top)), outline=(255, 200, 0, 255), width=2)
        draw.text((box[0] + 3, box[1] + 2), f"{value:.2f}", fill=(0, 0, 0, 255))
    draw.rectangle([0, 0, 92, 14], fill=(0, 0, 0, 160))
    draw.text((3, 2), f"background {background:.2f}", fill=(255, 255, 255, 255))
    return data_url(np.asarray(Image.alpha_composite(canvas, layer).convert("RGB")))
