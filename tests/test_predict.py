"""Turning arbitrary image files into the datasets' 28 x 28 format (no model needed)."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
import yaml
from PIL import Image

from mnist_cnn.datasets import DATASETS
from mnist_cnn.params import deep_merge, validate_params
from mnist_cnn.preprocessing import normalize_images
from mnist_cnn.tools.predict import (
    ImageError,
    load_grayscale,
    main,
    pipeline_shift_pixels,
    prepare_image,
    to_dataset_format,
)
from tests.conftest import committed_text


def digit_like(rng) -> np.ndarray:
    """A bright ring, a '0' 20 px tall, centre of mass at pixel (14, 14) as in MNIST."""
    ys, xs = np.indices((28, 28))
    radius = np.hypot((ys - 14) / 10, (xs - 14) / 7)
    return np.where((radius > 0.65) & (radius < 1.0), 255, 0).astype(np.uint8)


def test_dataset_format_images_are_used_as_is(tmp_path, rng):
    pixels = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
    pixels[0, :] = pixels[-1, :] = pixels[:, 0] = pixels[:, -1] = 0
    Image.fromarray(pixels).save(tmp_path / "x.png")
    np.testing.assert_array_equal(
        prepare_image(tmp_path / "x.png", "mnist"), normalize_images(pixels[np.newaxis])[0]
    )


def test_light_background_photo_is_inverted_cropped_and_centred(tmp_path, rng):
    digit = digit_like(rng)
    paper = 255 - np.asarray(Image.fromarray(digit).resize((112, 112)))
    photo = np.full((150, 200), 235, dtype=np.float64)  # slightly grey paper
    photo[20:132, 60:172] = paper * (220 / 255) + 10
    photo += rng.normal(0, 5, photo.shape)
    Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).convert("RGB").save(
        tmp_path / "photo.jpg", quality=90
    )

    result = prepare_image(tmp_path / "photo.jpg", "mnist")[..., 0]
    assert result.shape == (28, 28) and result.dtype == np.float32
    assert result.max() == pytest.approx(1.0, abs=0.02)  # contrast stretched
    assert result[0].max() < 0.1 and result[:, 0].max() < 0.1  # black background
    # The ring is 19 px tall and comes back 20 px tall (MNIST's box), hence not ~1.0;
    # tests/test_pipeline.py checks real digits, which come back at > 0.95.
    correlation = np.corrcoef(result.ravel(), digit.ravel() / 255.0)[0, 1]
    assert correlation > 0.8


def test_fashion_items_fill_the_frame(tmp_path):
    item = np.full((40, 80), 255, dtype=np.uint8)  # a wide white item on white paper...
    item[10:30, 5:75] = 30  # ...drawn dark
    Image.fromarray(item).save(tmp_path / "bag.png")
    result = prepare_image(tmp_path / "bag.png", "fashion_mnist")[..., 0]
    rows = np.flatnonzero(result.max(axis=1) > 0.5)
    cols = np.flatnonzero(result.max(axis=0) > 0.5)
    assert cols[0] == 0 and cols[-1] == 27  # longer side scaled to 28 px
    assert 13 - len(rows) // 2 <= rows[0] <= 15 - len(rows) // 2  # centred vertically


def test_transparent_background_counts_as_paper(tmp_path):
    rgba = np.zeros((60, 60, 4), dtype=np.uint8)  # fully transparent...
    rgba[10:50, 25:35] = (0, 0, 0, 255)  # ...with an opaque black stroke
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "stroke.png")
    pixels = load_grayscale(tmp_path / "stroke.png")
    assert pixels[0, 0] == 255 and pixels[30, 30] == 0
    assert to_dataset_format(pixels, "mnist").max() == 255


def png_claiming_size(path, width: int, height: int) -> None:
    """A small valid PNG whose header is rewritten to claim width x height pixels."""
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    # Signature (8) + IHDR length (4) + "IHDR" (4): width, height, 5 more bytes, then CRC.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_decompression_bomb_is_a_per_file_error(tmp_path):
    png_claiming_size(tmp_path / "bomb.png", 40000, 40000)
    with pytest.raises(ImageError, match="too many pixels"):
        load_grayscale(tmp_path / "bomb.png")


@pytest.mark.parametrize("size", [(9000, 8000), (11000, 9000)], ids=["72Mpx", "99Mpx"])
def test_images_past_the_photo_limit_are_refused_before_decoding(tmp_path, size):
    """72 Mpx: below Pillow's warning (89 Mpx), which would decode it (~2 GB); 99 Mpx:
    Pillow only warns, which is an error here. Neither is decoded."""
    png_claiming_size(tmp_path / "big.png", *size)
    with pytest.raises(ImageError, match="refused"):
        load_grayscale(tmp_path / "big.png")


def test_postscript_named_png_is_not_opened(tmp_path):
    """Pillow would hand this "photo" to Ghostscript; only photo formats are opened."""
    path = tmp_path / "digit.png"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n")
    with Image.open(path) as image:  # what an unrestricted open does: EPS, by content
        assert image.format == "EPS"
    with pytest.raises(ImageError, match="not a PNG, JPEG, GIF, BMP, TIFF or WebP"):
        load_grayscale(path)


def test_animations_and_multi_page_files_are_refused(tmp_path, rng):
    frames = [Image.fromarray(digit_like(rng)), Image.fromarray(255 - digit_like(rng))]
    frames[0].save(tmp_path / "two.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "two.tiff", save_all=True, append_images=frames[1:])
    for name in ("two.gif", "two.tiff"):
        with pytest.raises(ImageError, match="has 2 frames"):
            load_grayscale(tmp_path / name)


def test_directories_and_fifos_say_what_they_are(tmp_path):
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageError, match="is a directory"):
        load_grayscale(tmp_path / "folder.png")
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ImageError, match="not a regular file"):
        load_grayscale(tmp_path / "pipe.png")  # and does not block reading the FIFO


def test_control_characters_in_names_cannot_fake_result_lines(tmp_path, rng, capsys):
    name = tmp_path / "x\n7.png: 7 100.0%.png"
    (tmp_path / "x\n7.png: 7 100.0%.png").write_text("not a picture")
    assert main(["--dataset", "mnist", str(name)]) == 1
    err = capsys.readouterr().err
    assert "x\\n7.png: 7 100.0%.png" in err  # escaped: one line, the \n visible
    assert not any(line.startswith("7.png") for line in err.splitlines())


@pytest.mark.parametrize(
    "blank",
    [
        np.full((50, 50), 255, dtype=np.uint8),  # white paper
        np.zeros((28, 28), dtype=np.uint8),  # black, already in the datasets' size
        np.full((1, 1), 128, dtype=np.uint8),  # a single pixel
        np.clip(np.random.default_rng(0).normal(235, 4, (90, 120)), 0, 255).astype(np.uint8),
    ],
    ids=["white", "black-28x28", "1x1", "noisy-grey-paper"],
)
def test_image_with_no_object_is_refused_not_classified(blank):
    with pytest.raises(ImageError, match="no object found"):
        to_dataset_format(blank, "mnist")


def test_faint_but_real_object_is_kept():
    pixels = np.full((60, 60), 200, dtype=np.uint8)  # grey paper, a stroke 40 levels darker
    pixels[10:50, 28:32] = 160
    assert to_dataset_format(pixels, "mnist").max() == 255


def test_sixteen_bit_grayscale_keeps_its_content(tmp_path, rng):
    digit = digit_like(rng)
    eight_bit = 255 - digit  # dark ring on white paper
    Image.fromarray(eight_bit.astype(np.uint16) * 257).save(tmp_path / "ring16.png")
    with Image.open(tmp_path / "ring16.png") as image:
        assert image.mode.startswith("I")  # really a 16-bit file
    np.testing.assert_array_equal(load_grayscale(tmp_path / "ring16.png"), eight_bit)
    Image.fromarray(eight_bit).save(tmp_path / "ring8.png")
    np.testing.assert_array_equal(
        prepare_image(tmp_path / "ring16.png", "mnist"),
        prepare_image(tmp_path / "ring8.png", "mnist"),
    )


def test_float_image_in_unit_range_is_scaled(tmp_path, rng):
    digit = digit_like(rng)
    Image.fromarray(digit.astype(np.float32) / 255, mode="F").save(tmp_path / "ring.tiff")
    np.testing.assert_array_equal(load_grayscale(tmp_path / "ring.tiff"), digit)


def test_unreadable_files_name_the_problem(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_grayscale(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(ImageError, match="not a PNG, JPEG, GIF, BMP, TIFF or WebP image"):
        load_grayscale(tmp_path / "notes.png")
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="corrupt image"):
        load_grayscale(tmp_path / "cut.png")


def test_test_time_shifts_follow_the_pipeline_params(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert pipeline_shift_pixels("fashion_mnist") == 0  # no params.yaml: one view
    raw = committed_text("params.yaml")
    (tmp_path / "params.yaml").write_text(raw)
    committed = validate_params(yaml.safe_load(raw))  # each dataset's evaluate settings
    expected = {key: committed.evaluate_for(key).test_time_shift_pixels for key in DATASETS}
    assert {key: pipeline_shift_pixels(key) for key in expected} == expected
    out_of_range = {"datasets": {"fashion_mnist": {"evaluate": {"test_time_shift_pixels": 7}}}}
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(deep_merge(yaml.safe_load(raw), out_of_range))
    )
    assert main(["--dataset", "fashion_mnist", str(tmp_path / "shoe.png")]) == 2
    error = capsys.readouterr().err
    assert "datasets.fashion_mnist.evaluate.test_time_shift_pixels = 7" in error
    assert "pass --test-time-shift-pixels" in error


@pytest.mark.parametrize(
    "value, message",
    [("4", "4 is not allowed: input should be less than or equal to 3"), ("one", "whole number")],
)
def test_shift_flag_is_held_to_the_params_bounds(value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "mnist", "any.png", "--test-time-shift-pixels", value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
