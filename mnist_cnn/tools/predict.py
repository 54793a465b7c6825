"""Predict the class of your own images with a trained model (not a pipeline stage).

    mnist-cnn-predict --dataset fashion_mnist shoe.jpg shirt.png [--json] [--top 3]
    python -m mnist_cnn.tools.predict ...   (the same)

Real photos are not 28 x 28 light-on-dark images, so each one is turned into one:
  1. Pillow opens it — only the formats photos and scans come in (OPEN_FORMATS: PNG,
     JPEG, GIF, BMP, TIFF, WebP), one frame, at most MAX_PIXELS pixels — and applies its
     EXIF rotation; a transparent background counts as white paper.
  2. It becomes 8-bit grayscale; 16- and 32-bit grayscale are scaled down to 8 bits
     (not clipped), float images from their [0, 1] or [0, 255] range.
     An image with nothing in it is refused, not classified: when its brightest
     (after step 4's inversion) pixel stands less than MIN_CONTRAST (10 % of the
     grey range, 26 levels) above its background level, "no object" is reported.
  3. An image that already is 28 x 28 on a dark background is in the datasets' own format
     and is used exactly as it is. Anything else:
  4. is inverted when its background is light (mean of the outermost pixels > 127), since
     MNIST and Fashion-MNIST draw light objects on black; then the background level (the
     median of the outermost pixels) is subtracted and the contrast stretched to 0-255,
     so grey paper becomes black and a faint pen stroke becomes white;
  5. is cropped to the object: the box around pixels brighter than 25 % of the brightest;
  6. is scaled, aspect ratio kept, so its longer side is 20 px (MNIST, whose digits sit
     in a 20 x 20 box) or 28 px (Fashion-MNIST, whose items fill the frame), and placed on
     a black 28 x 28 canvas: its centre of mass at pixel (14, 14) for MNIST (as MNIST
     itself was made), in the middle for Fashion-MNIST.
  7. Pixels are scaled to [0, 1] by the same function the pipeline uses for training.
"""

from __future__ import annotations

import argparse
import json
import stat
import sys
import warnings
from pathlib import Path
from typing import Annotated

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import TypeAdapter, ValidationError

from mnist_cnn.datasets import DATASETS, IMAGE_SHAPE, get_spec
from mnist_cnn.params import PARAMS_FILE, EvaluateParams, load_params
from mnist_cnn.preprocessing import normalize_images

# Longer side of the object after fitting, per dataset (see step 6 above).
FIT_SIZE = {"mnist": 20, "fashion_mnist": 28}
CENTER_OF_MASS = {"mnist": True, "fashion_mnist": False}
OBJECT_THRESHOLD = 0.25  # share of the brightest pixel that counts as object (step 5)
MIN_CONTRAST = 0.10  # object vs background, as a share of 0-255, below which: no object
PREDICT_BATCH = 256  # images per forward pass
# Formats Pillow may open. Not "anything Pillow knows": for EPS/PostScript it starts
# Ghostscript on the file, whatever its name says, and a -dSAFER bypass in Ghostscript
# then runs code from a "photo". Photos and scans come in these.
OPEN_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
# A 48-megapixel phone photo is 8064 x 6048 = 48.8 Mpx; decoding costs ~25-28 bytes of
# RAM per pixel (measured), so this caps one image at ~1.7 GB. Pillow's own limits (warn
# at 89 Mpx, refuse at 179 Mpx) would let 4-5 GB through.
MAX_PIXELS = 64_000_000


class ImageError(ValueError):
    """One input file cannot be used; the message says why."""


def to_uint8_gray(image: Image.Image) -> np.ndarray:
    """Any Pillow mode → uint8 grayscale, keeping the content of high-bit-depth images.

    Pillow's convert("L") clips 16-bit ("I;16", "I") and float ("F") pixels at 255,
    which turns most such images white; they are rescaled here instead.
    """
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        pixels = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = 1.0 if pixels.max(initial=0.0) <= 1.0 else 255.0
        else:  # 16-bit files open as I;16 or I; 8-bit content in an I image stays as is
            top = 65535.0 if pixels.max(initial=0.0) > 255 or image.mode != "I" else 255.0
        return np.round(np.clip(pixels / top, 0.0, 1.0) * 255).astype(np.uint8)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def check_regular_file(path: Path) -> None:
    """ImageError unless `path` is a regular file (or a link to one), naming what it is."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except OSError as error:
        raise ImageError(f"cannot read it ({error.strerror})") from None
    if stat.S_ISDIR(mode):
        raise ImageError("is a directory, not an image file")
    if not stat.S_ISREG(mode):
        raise ImageError("is not a regular file (a FIFO, socket or device), not an image file")


def load_grayscale(path: Path) -> np.ndarray:
    """Read a photo or scan as uint8 grayscale (steps 1-2).

    Every way a file can fail is an ImageError naming the problem, so one bad file
    never stops the others from being predicted.
    """
    check_regular_file(path)
    try:
        # Pillow's decompression-bomb warning (above its own 89 Mpx) is an error here.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=OPEN_FORMATS) as image:
                # The header is read; nothing is decoded yet.
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError(
                        f"refused: {width} x {height} = {width * height / 1e6:.0f} Mpx, more "
                        f"than a photo of one object needs (limit {MAX_PIXELS / 1e6:.0f} Mpx)"
                    )
                frames = getattr(image, "n_frames", 1)
                if frames > 1:
                    raise ImageError(
                        f"has {frames} frames (an animation or a multi-page file): save the "
                        "one to classify as an image of its own"
                    )
                image.load()  # decode now, so a truncated file fails here
                return to_uint8_gray(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(
            "not a PNG, JPEG, GIF, BMP, TIFF or WebP image (other formats are not opened)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"refused: too many pixels to be a photo ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"corrupt image ({error})") from None
    except Exception as error:  # Pillow's plugins raise many kinds
        raise ImageError(f"cannot read image ({type(error).__name__}: {error})") from None


def border_pixels(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])


def border_mean(pixels: np.ndarray) -> float:
    return float(border_pixels(pixels).mean())


def to_dataset_format(pixels: np.ndarray, dataset: str) -> np.ndarray:
    """uint8 grayscale of any size → uint8 28 x 28, light object on black (steps 3-6)."""
    height, width = IMAGE_SHAPE
    light_background = border_mean(pixels) > 127
    if light_background:
        pixels = 255 - pixels
    lifted = np.clip(pixels.astype(np.float64) - np.median(border_pixels(pixels)), 0, None)
    if lifted.max() < MIN_CONTRAST * 255:
        raise ImageError(
            f"no object found: nothing stands out from the background by {MIN_CONTRAST:.0%} "
            f"of the grey range (brightest {lifted.max():.0f} of 255 above it)"
        )
    if pixels.shape == IMAGE_SHAPE and not light_background:
        return pixels
    pixels = np.round(lifted * (255.0 / max(lifted.max(), 1.0))).astype(np.uint8)
    mask = pixels > OBJECT_THRESHOLD * max(int(pixels.max()), 1)
    if mask.any():
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        pixels = pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    fit = FIT_SIZE[dataset]
    scale = fit / max(pixels.shape)
    size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
    resized = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))

    canvas = np.zeros(IMAGE_SHAPE, dtype=np.uint8)
    top, left = (height - resized.shape[0]) // 2, (width - resized.shape[1]) // 2
    if CENTER_OF_MASS[dataset] and resized.sum() > 0:
        ys, xs = np.indices(resized.shape)
        total = resized.sum(dtype=np.float64)
        # MNIST's digits have their centre of mass at pixel (14, 14): measured on its
        # test set, the mean is (13.99, 14.01).
        top = round(height / 2 - (ys * resized).sum() / total)
        left = round(width / 2 - (xs * resized).sum() / total)
        top = min(max(top, 0), height - resized.shape[0])
        left = min(max(left, 0), width - resized.shape[1])
    canvas[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
    return canvas


def prepare_image(path: Path, dataset: str) -> np.ndarray:
    """One file → float32 28 x 28 x 1 in [0, 1], exactly as the model was trained on."""
    return normalize_images(to_dataset_format(load_grayscale(path), dataset)[np.newaxis])[0]


def pipeline_shift_pixels(dataset: str) -> int:
    """The evaluate stage's test-time shifts for `dataset` from ./params.yaml, else 0."""
    if not PARAMS_FILE.is_file():
        return 0  # outside the project (a model fetched from the registry): one view
    return load_params().evaluate_for(dataset).test_time_shift_pixels


def shift_pixels_argument(text: str) -> int:
    """--test-time-shift-pixels, held to the bounds of params.yaml's setting (one place)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    field = EvaluateParams.model_fields["test_time_shift_pixels"]
    try:
        return TypeAdapter(Annotated[int, field]).validate_python(value)
    except ValidationError as error:
        rule = error.errors()[0]["msg"].lower()
        raise argparse.ArgumentTypeError(f"{value} is not allowed: {rule}") from None


def printable(text: str) -> str:
    """`text` with control characters escaped (a newline in a file name becomes \\n), so
    a crafted name cannot print lines that look like results."""
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def top_classes(probabilities: np.ndarray, class_names: tuple[str, ...], top: int) -> list[dict]:
    order = np.argsort(-probabilities, kind="stable")[:top]
    return [
        {"class": class_names[i], "probability": round(float(probabilities[i]), 6)} for i in order
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Predict classes of image files with a model trained by the pipeline."
    )
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    parser.add_argument("--model", type=Path, help="a .keras file (default models/<dataset>.keras)")
    parser.add_argument("--top", type=int, default=3, help="how many classes to list (3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--test-time-shift-pixels",
        type=shift_pixels_argument,
        metavar="N",
        help="average over the image shifted by up to ±N px (default: the dataset's "
        "evaluate setting in ./params.yaml, as the evaluate stage scores it; 0 without one)",
    )
    args = parser.parse_args(argv)
    spec = get_spec(args.dataset)
    shifts = args.test_time_shift_pixels
    if shifts is None:
        try:
            shifts = pipeline_shift_pixels(spec.key)
        except ValueError as error:  # ParamsError included
            print(
                f"predict: {error}\npredict: fix params.yaml or pass --test-time-shift-pixels",
                file=sys.stderr,
            )
            return 2

    # Read every image first: a bad file is reported and the rest are still predicted.
    results: list[dict] = []
    batch, batch_rows = [], []
    for path in args.images:
        try:
            batch.append(prepare_image(path, spec.key))
            batch_rows.append(len(results))
            results.append({"path": str(path)})
        except ImageError as error:
            results.append({"path": str(path), "error": str(error)})

    if batch:
        # TensorFlow loads only when there is something to predict.
        from mnist_cnn.evaluation import load_trained_model, predict_probabilities

        try:
            model = load_trained_model(spec.key, args.model)
        except (FileNotFoundError, ValueError) as error:  # ModelError included
            print(f"predict: cannot load the model: {printable(str(error))}", file=sys.stderr)
            return 2
        probabilities = predict_probabilities(model, np.stack(batch), PREDICT_BATCH, shifts)
        for row, probs in zip(batch_rows, probabilities, strict=True):
            results[row]["predictions"] = top_classes(probs, spec.class_names, args.top)

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            if "error" in result:
                continue
            ranked = "   ".join(
                f"{p['class']} {p['probability']:.1%}" for p in result["predictions"]
            )
            print(f"{printable(result['path'])}: {ranked}")
    for result in results:
        if "error" in result:
            print(f"predict: {printable(result['path'])}: {result['error']}", file=sys.stderr)
    return 1 if any("error" in result for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
