"""Resize and convert images, and draw a contact sheet of the results.

Every image is turned upright (EXIF orientation), shrunk to fit the maximum size (keeping its
aspect ratio, never enlarged) and saved as JPEG, PNG or WebP into `images.zip`. An image that
cannot be read counts as failed and is named in the log; the others carry on. Only the first
frame of an animation or multi-page TIFF is used.
"""

from __future__ import annotations

import io
import math
import warnings
import zipfile
from pathlib import Path, PurePath

import wtforms
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError
from wtforms import validators

from jobs.kinds import JobContext, JobError, JobKind
from jobs.kinds._common import UniqueNames, read_options
from jobs.reporter import JobCancelled

# Pillow formats we decode. Naming them keeps Image.open away from every other plugin (EPS,
# for one, would run Ghostscript on an upload). The JPEG reader also opens MPO camera files.
INPUT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF")
ACCEPTED = "JPEG, PNG, WebP, GIF or TIFF"
# Decoding allocates width x height pixels whatever the file size: refuse anything bigger.
MAX_PIXELS = 64_000_000
# Pillow itself only warns about a bomb up to twice its own limit, and then decodes it anyway.
warnings.simplefilter("error", Image.DecompressionBombWarning)
OUTPUT_FORMATS = {"jpeg": ("JPEG", "jpg"), "png": ("PNG", "png"), "webp": ("WEBP", "webp")}

THUMB = 160  # contact sheet: the longest side of a thumbnail
CELL_W, CELL_H = THUMB + 20, THUMB + 36  # room for the name under the thumbnail
MAX_COLUMNS = 10


class ImageOptions(wtforms.Form):
    max_width = wtforms.IntegerField(
        "Maximum width (pixels)", default=1600, validators=[validators.NumberRange(16, 10_000)]
    )
    max_height = wtforms.IntegerField(
        "Maximum height (pixels)", default=1600, validators=[validators.NumberRange(16, 10_000)]
    )
    output_format = wtforms.SelectField(
        "Output format",
        default="jpeg",
        choices=[
            wtforms.SelectChoice("jpeg", "JPEG"),
            wtforms.SelectChoice("png", "PNG"),
            wtforms.SelectChoice("webp", "WebP"),
        ],
    )
    quality = wtforms.IntegerField(
        "Quality (JPEG and WebP)", default=85, validators=[validators.NumberRange(1, 100)]
    )


class ImageRefused(Exception):
    """An image we will not decode; the message says why."""


def open_image(path: Path) -> Image.Image:
    """Open an image lazily (header only), refusing unknown formats and decompression bombs."""
    try:
        image = Image.open(path, formats=INPUT_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRefused(_too_large()) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageRefused(f"is not an image ({ACCEPTED})") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise ImageRefused(_too_large(f"{width} × {height} pixels"))
    return image


def _too_large(size: str = "") -> str:
    detail = f"{size}; " if size else ""
    return f"is too large ({detail}the limit is {MAX_PIXELS // 1_000_000} megapixels)"


def check_file(path: Path) -> str | None:
    """Accept a file whose content is an image of a format we read and of a sane size."""
    try:
        open_image(path).close()
    except ImageRefused as exc:
        return str(exc)
    return None


def convert_images(ctx: JobContext) -> None:
    options = read_options(ImageOptions, ctx.params)
    reporter = ctx.reporter
    pil_format, extension = OUTPUT_FORMATS[options["output_format"]]
    names = UniqueNames()
    thumbnails: list[tuple[str, Image.Image | None]] = []
    failed = 0

    reporter.stage("Converting", total=len(ctx.inputs))
    zip_path = ctx.output("images.zip")
    # Stored, not deflated: JPEG, PNG and WebP are compressed already.
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as archive:
        for index, path in enumerate(ctx.inputs):
            reporter.check()
            reporter.item(index, path.name, 0)
            try:
                image = load_upright(path)
                reporter.item(index, path.name, 30)
                image = fit(image, options["max_width"], options["max_height"])
                reporter.item(index, path.name, 60)
                data = encode(image, pil_format, options["quality"])
            except JobCancelled:
                raise
            except Exception as exc:  # one bad image must not stop the others
                failed += 1
                reason = describe_failure(exc)
                reporter.log(f"{path.name}: skipped, {reason}", "warning")
                reporter.item(index, path.name, 100, "failed", reason=reason)
                reporter.advance(failed=1, current=path.name)
                thumbnails.append((path.name, None))
                continue
            archive.writestr(names.take(f"{PurePath(path.name).stem}.{extension}"), data)
            thumbnails.append((path.name, thumbnail(image)))
            reporter.item(index, path.name, 100, "done")
            reporter.advance(current=path.name)

    if failed == len(ctx.inputs):
        zip_path.unlink()
        raise JobError(f"None of the {len(ctx.inputs)} files could be read as an image.")
    if failed:
        reporter.log(f"{failed} of {len(ctx.inputs)} images could not be converted", "warning")

    reporter.stage("Contact sheet", total=len(thumbnails))
    sheet = contact_sheet(thumbnails, on_cell=reporter.advance)
    sheet.save(ctx.output("contact-sheet.jpg"), "JPEG", quality=85)


def load_upright(path: Path) -> Image.Image:
    """Decode the first frame, turned the way the camera meant it."""
    with open_image(path) as image:
        image.load()
        return ImageOps.exif_transpose(image)  # a copy, so closing the file is safe


def fit(image: Image.Image, max_width: int, max_height: int) -> Image.Image:
    """Shrink to fit the box, keeping the aspect ratio; never enlarge."""
    image = normalize_mode(image)
    image.thumbnail((max_width, max_height), Image.Resampling.LANCZOS)
    return image


def normalize_mode(image: Image.Image) -> Image.Image:
    """One of L, LA, RGB or RGBA: the modes that resize smoothly and every encoder takes."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if mode == "P":
        # palette transparency survives only as a real alpha channel
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if mode in ("PA", "RGBa", "La"):
        return image.convert("RGBA")
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grey: scale to 8 bits rather than clip everything above 255 to white
        return image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    rgb = image.convert("RGB")  # from CMYK, YCbCr, LAB, HSV or F
    rgb.info.pop("icc_profile", None)  # it describes the old colour space, not RGB
    return rgb


def encode(image: Image.Image, pil_format: str, quality: int) -> bytes:
    """The image saved in `pil_format`, alpha flattened onto white where JPEG needs it."""
    if pil_format == "JPEG" and image.mode in ("LA", "RGBA"):
        image = flatten(image)
    elif pil_format == "WEBP" and image.mode in ("L", "LA"):
        # WebP has no grey mode, and a grey ICC profile would be wrong on colour pixels
        image = image.convert("RGBA" if image.mode == "LA" else "RGB")
        image.info.pop("icc_profile", None)
    icc_profile = image.info.get("icc_profile")
    buffer = io.BytesIO()
    options: dict = {"icc_profile": icc_profile} if icc_profile else {}
    if pil_format == "JPEG":
        options.update(quality=quality, optimize=True)
    elif pil_format == "WEBP":
        options.update(quality=quality, method=4)
    image.save(buffer, pil_format, **options)
    return buffer.getvalue()


def flatten(image: Image.Image) -> Image.Image:
    """Composite an image with alpha onto white (JPEG has no transparency)."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, "white")
    flat = Image.alpha_composite(background, rgba).convert("RGB" if image.mode == "RGBA" else "L")
    if "icc_profile" in image.info:
        flat.info["icc_profile"] = image.info["icc_profile"]
    return flat


def thumbnail(image: Image.Image) -> Image.Image:
    small = image.copy()
    small.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    return flatten(small).convert("RGB") if small.mode in ("LA", "RGBA") else small.convert("RGB")


def describe_failure(exc: Exception) -> str:
    """A short reason a person can act on, from whatever Pillow raised."""
    if isinstance(exc, ImageRefused):
        return str(exc)
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return _too_large()
    text = str(exc).strip() or type(exc).__name__
    if "truncated" in text:
        return "the file is truncated or corrupt"
    return f"the image could not be read ({text[:120]})"


def contact_sheet(thumbnails: list[tuple[str, Image.Image | None]], on_cell) -> Image.Image:
    """A grid of thumbnails, each with its file name; failed images show as a grey cell."""
    columns = max(1, min(MAX_COLUMNS, math.ceil(math.sqrt(len(thumbnails)))))
    rows = math.ceil(len(thumbnails) / columns)
    sheet = Image.new("RGB", (columns * CELL_W, rows * CELL_H), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    for index, (name, thumb) in enumerate(thumbnails):
        x, y = (index % columns) * CELL_W, (index // columns) * CELL_H
        if thumb is None:
            draw.rectangle((x + 10, y + 10, x + 10 + THUMB, y + 10 + THUMB), fill="#ddd")
            draw.text(
                (x + CELL_W // 2, y + 10 + THUMB // 2),
                "could not be read",
                fill="#a00",
                font=font,
                anchor="mm",
            )
        else:
            left, top = (CELL_W - thumb.width) // 2, 10 + (THUMB - thumb.height) // 2
            sheet.paste(thumb, (x + left, y + top))
        label = shorten(name, draw, font, CELL_W - 8)
        draw.text((x + CELL_W // 2, y + THUMB + 22), label, fill="black", font=font, anchor="mm")
        on_cell()
    return sheet


def shorten(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> str:
    """`text`, cut in the middle with an ellipsis until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 2:
        keep -= 1
        head, tail = text[: (keep + 1) // 2], text[len(text) - keep // 2 :]
        candidate = f"{head}…{tail}"
        if draw.textlength(candidate, font=font) <= width:
            return candidate
    return text[:1] + "…"


KIND = JobKind(
    slug="images",
    title="Resize and convert images",
    description="Shrinks images to fit a size, saves them as JPEG, PNG or WebP in one zip, "
    "and draws a contact sheet of the results.",
    work=convert_images,
    options=ImageOptions,
    check_file=check_file,
    accept="image/jpeg,image/png,image/webp,image/gif,image/tiff",
    accept_label=f"{ACCEPTED} images",
    max_files=500,
    max_total_bytes=2 * 1024**3,
    stages=(("Converting", 9), ("Contact sheet", 1)),
    rate_unit="images",
    retry_items=True,
)
