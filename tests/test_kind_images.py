"""The images kind: real images of every format in, resized and converted images out."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image

from jobs.kinds import images

from .kind_helpers import log_messages, result_names, run_files

NOT_AN_IMAGE = "is not an image (JPEG, PNG, WebP, GIF or TIFF)"


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG that declares `width` x `height` pixels: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def sideways_jpeg(path: Path) -> Path:
    """400 x 200 as stored, red left and blue right, with EXIF "rotate 90° clockwise"."""
    image = Image.new("RGB", (400, 200), "blue")
    image.paste((255, 0, 0), (0, 0, 200, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored left edge is the top
    image.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.effect_noise((300, 300), 60).convert("RGB").save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


@pytest.fixture
def good_images(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "good"
    folder.mkdir()
    files = {"landscape.jpg": sideways_jpeg(folder / "landscape.jpg")}
    Image.new("RGBA", (300, 150), (0, 0, 255, 128)).save(folder / "alpha.png")
    frames = [Image.new("RGB", (120, 90), color) for color in ("green", "yellow")]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=80)
    Image.new("RGB", (200, 80), "orange").save(folder / "photo.png")
    Image.new("RGB", (250, 250), "purple").save(folder / "photo.webp", quality=90)
    Image.new("CMYK", (500, 100), (0, 255, 255, 0)).save(folder / "scan.tiff")
    Image.new("L", (40, 30), 128).save(folder / "small.png")
    for name in ("alpha.png", "anim.gif", "photo.png", "photo.webp", "scan.tiff", "small.png"):
        files[name] = folder / name
    return files


@pytest.fixture
def bad_images(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "notes.png").write_text("shopping list: milk, eggs\n")
    return {
        "corrupt.jpg": truncated_jpeg(folder / "corrupt.jpg"),
        "notes.png": folder / "notes.png",
        "bomb.png": png_header_only(folder / "bomb.png", 30_000, 30_000),
    }


# -- check_file -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["landscape.jpg", "alpha.png", "anim.gif", "photo.webp", "scan.tiff"]
)
def test_check_file_accepts_each_format(good_images, name):
    assert images.check_file(good_images[name]) is None


def test_check_file_decides_by_content_not_name(tmp_path, good_images):
    text = tmp_path / "photo.jpg"
    text.write_text("this is not a photo\n")
    csv_named_png = tmp_path / "chart.png"
    csv_named_png.write_text("a,b\n1,2\n")
    bmp_named_png = tmp_path / "logo.png"
    Image.new("RGB", (10, 10)).save(bmp_named_png, "BMP")  # an image, not an accepted format
    png_named_txt = tmp_path / "readme.txt"
    png_named_txt.write_bytes(good_images["alpha.png"].read_bytes())

    assert images.check_file(text) == NOT_AN_IMAGE
    assert images.check_file(csv_named_png) == NOT_AN_IMAGE
    assert images.check_file(bmp_named_png) == NOT_AN_IMAGE
    assert images.check_file(png_named_txt) is None


def test_check_file_refuses_decompression_bombs(tmp_path):
    huge = png_header_only(tmp_path / "huge.png", 30_000, 30_000)  # 900 megapixels
    over_limit = png_header_only(tmp_path / "big.png", 9_000, 8_000)  # 72: Pillow would allow it
    at_limit = png_header_only(tmp_path / "ok.png", 8_000, 8_000)

    assert huge.stat().st_size < 1000
    assert images.check_file(huge) == "is too large (the limit is 64 megapixels)"
    assert images.check_file(over_limit) == (
        "is too large (9000 × 8000 pixels; the limit is 64 megapixels)"
    )
    assert images.check_file(at_limit) is None


# -- the job ----------------------------------------------------------------------------------


def test_resizes_converts_and_carries_on_past_bad_images(store, consumer, good_images, bad_images):
    inputs = [*good_images.values(), *bad_images.values()]
    job, output = run_files(
        store, "images", inputs, max_width=100, max_height=100, output_format="jpeg", quality=80
    )

    assert job.status == "succeeded", job.error
    assert result_names(job) == ["contact-sheet.jpg", "images.zip"]
    assert job.failed == 3
    warnings = " ".join(log_messages(store, job.id, "warning"))
    assert "corrupt.jpg: skipped, the file is truncated or corrupt" in warnings
    assert f"notes.png: skipped, {NOT_AN_IMAGE}" in warnings
    assert "bomb.png: skipped, is too large" in warnings
    assert {item.name: item.status for item in store.items(job.id)} == {
        **dict.fromkeys(good_images, "done"),
        **dict.fromkeys(bad_images, "failed"),
    }

    with zipfile.ZipFile(output / "images.zip") as archive:
        converted = {
            name: Image.open(io.BytesIO(archive.read(name))) for name in archive.namelist()
        }
    sizes = {name: image.size for name, image in converted.items()}
    assert sizes == {
        "landscape.jpg": (50, 100),  # turned upright first, then fitted
        "alpha.jpg": (100, 50),
        "anim.jpg": (100, 75),
        "photo.jpg": (100, 40),  # photo.png
        "photo-2.jpg": (100, 100),  # photo.webp: same stem, not lost
        "scan.jpg": (100, 20),
        "small.jpg": (40, 30),  # never enlarged
    }
    assert {image.format for image in converted.values()} == {"JPEG"}
    upright = converted["landscape.jpg"].convert("RGB")
    assert _near(upright.getpixel((25, 10)), (255, 0, 0))  # the red half is on top
    assert _near(upright.getpixel((25, 90)), (0, 0, 255))
    assert _near(converted["alpha.jpg"].getpixel((50, 25)), (127, 127, 255))  # on white
    assert _near(converted["anim.jpg"].getpixel((50, 37)), (0, 128, 0))  # the first frame
    assert converted["small.jpg"].mode == "L"

    with Image.open(output / "contact-sheet.jpg") as sheet:
        assert sheet.format == "JPEG"
        assert sheet.width * sheet.height >= len(inputs) * 160 * 160
        assert len(sheet.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50  # not blank


def test_png_and_webp_keep_transparency(store, consumer, good_images):
    files = [good_images["alpha.png"], good_images["anim.gif"]]
    for output_format, extension in (("png", "png"), ("webp", "webp")):
        job, output = run_files(store, "images", files, output_format=output_format)
        assert job.status == "succeeded", job.error
        assert job.failed == 0
        with zipfile.ZipFile(output / "images.zip") as archive:
            assert sorted(archive.namelist()) == [f"alpha.{extension}", f"anim.{extension}"]
            alpha = Image.open(io.BytesIO(archive.read(f"alpha.{extension}")))
        assert alpha.format == output_format.upper()
        assert alpha.size == (300, 150)  # the defaults (1600 x 1600) do not enlarge
        assert alpha.mode == "RGBA"
        assert abs(alpha.getpixel((10, 10))[3] - 128) <= 2


def test_job_fails_when_no_image_can_be_read(store, consumer, bad_images):
    job, output = run_files(store, "images", list(bad_images.values()))
    assert job.status == "failed"
    assert job.error == "None of the 3 files could be read as an image."
    assert job.files == []
    assert not (output / "images.zip").exists()


def test_options_are_validated_like_the_form(store, consumer, good_images):
    job, _ = run_files(store, "images", [good_images["small.png"]], quality=0)
    assert job.status == "failed"
    assert job.error.startswith("Invalid options: Quality (JPEG and WebP):")


def _near(pixel, expected, tolerance=40) -> bool:
    pixel = pixel if isinstance(pixel, tuple) else (pixel,) * 3
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=False))
