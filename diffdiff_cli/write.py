"""Write: the output file, atomically (temporary file in the same folder, then rename), with metadata."""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

from PIL import Image, PngImagePlugin

from diffdiff_cli.errors import InputError

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
TEMP_PREFIX = ".diffdiff-tmp-"
_USER_COMMENT = 0x9286  # EXIF UserComment, where A1111 keeps its parameters in JPEG and WebP
_IMAGE_DESCRIPTION = 0x010E  # EXIF ImageDescription: diffdiff's own JSON in JPEG and WebP


def output_format(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"-o {path}: unsupported extension {suffix or '(none)'!r}; use .png, .jpg, .jpeg or .webp")
    return FORMATS[suffix]


def check_output_path(output: str, inputs: list[str]) -> None:
    """Refuse to overwrite an input; the folder must exist and be writable. `-` is standard output."""
    if output == "-":
        return
    output_format(output)
    out = Path(output)
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"-o {output}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise InputError(f"-o {output}: folder {folder} is not writable")
    if out.is_dir():
        raise InputError(f"-o {output}: is a folder; give a file name such as {out / 'edited.png'}")
    for source in inputs:
        if out.resolve() == Path(source).resolve():
            raise InputError(f"-o {output}: is the input image; choose another output name")


def a1111_parameters(settings: dict) -> str:
    """The `parameters` text A1111 and most image viewers' AI-metadata readers understand."""
    lines = [settings["prompt"]]
    if settings.get("negative_prompt"):
        lines.append(f"Negative prompt: {settings['negative_prompt']}")
    fields = {
        "Steps": settings["steps"],
        "Sampler": settings["sampler"],
        "CFG scale": settings["guidance"],
        "Seed": settings["seed"],
        "Size": f"{settings['width']}x{settings['height']}",
        "Model": settings["model"],
        "Denoising strength": settings["strength"],
        "Diffdiff schedule": settings["schedule"],
        "Diffdiff hardness": settings["hardness"],
        "Diffdiff map": settings["map"],
        "Diffdiff invert map": settings["invert_map"],
    }
    fields.update(_extras_fields(settings))
    if settings.get("region"):  # the working region (--fit) and the size the model ran it at
        fields["Diffdiff fit"] = settings["fit"]
        fields["Diffdiff region"] = ",".join(str(v) for v in settings["region"])
        fields["Diffdiff work size"] = "x".join(str(v) for v in settings["work_size"])
    fields["Version"] = f"diffdiff {settings['diffdiff_version']}"
    lines.append(", ".join(f"{k}: {_field(v)}" for k, v in fields.items()))
    return "\n".join(lines)


def _extras_fields(settings: dict) -> dict:
    """A1111's keys for clip skip, LoRAs, embeddings and the VAE (only those a run used)."""
    fields = {}
    if settings.get("clip_skip"):
        fields["Clip skip"] = settings["clip_skip"]
    if settings.get("lora_hashes"):
        fields["Lora hashes"] = ", ".join(f"{name}: {h}" for name, h in settings["lora_hashes"].items())
    if settings.get("ti_hashes"):
        fields["TI hashes"] = ", ".join(f"{token}: {h}" for token, h in settings["ti_hashes"].items())
    if settings.get("vae_name"):
        fields["VAE"] = settings["vae_name"]
        if settings.get("vae_hash"):
            fields["VAE hash"] = settings["vae_hash"]
    return fields


def _field(value) -> str:
    text = str(value)
    return json.dumps(text) if ("," in text or ":" in text or "\n" in text) else text


def temp_prefix() -> str:
    """Temporary files name their host and process, so a later run can tell abandoned ones from live ones."""
    return f"{TEMP_PREFIX}{socket.gethostname().replace('-', '_')}-{os.getpid()}-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_atomically(image: Image.Image, path: str, settings: dict) -> None:
    """Write `image` to `path` so that `path` is either absent, the old file, or the complete new one.

    `-` writes PNG to standard output (for pipes).
    """
    fmt = "PNG" if path == "-" else output_format(path)
    if fmt == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")  # JPEG keeps no alpha or palette
    save_args: dict = {}
    parameters = a1111_parameters(settings)
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("parameters", parameters)
        info.add_itxt("diffdiff", json.dumps(settings, sort_keys=True))
        save_args["pnginfo"] = info
    else:
        exif = Image.Exif()
        exif[_USER_COMMENT] = b"UNICODE\0" + parameters.encode("utf-16-be")
        exif[_IMAGE_DESCRIPTION] = json.dumps({"diffdiff": settings}, sort_keys=True)
        save_args["exif"] = exif.tobytes()
        save_args["quality"] = 95
    if path == "-":
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **save_args)
        sys.stdout.buffer.write(buffer.getvalue())
        sys.stdout.buffer.flush()
        return
    write_image_atomically(image, path, fmt, save_args)


def write_image_atomically(image: Image.Image, path: str, fmt: str, save_args: dict | None = None) -> None:
    """Save through a temporary file in the target's folder, then rename: no half-written file, ever."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    fd, temp_name = tempfile.mkstemp(prefix=temp_prefix(), suffix=target.suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format=fmt, **(save_args or {}))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o666 & ~_umask())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def read_recorded(path: str, flag: str = "info") -> tuple[dict | None, str | None]:
    """The settings JSON and the A1111 `parameters` text an output carries (either may be None)."""
    from diffdiff_cli.load import open_image

    image = open_image(path, flag)
    settings, parameters = None, image.info.get("parameters")
    if "diffdiff" in image.info:
        settings = json.loads(image.info["diffdiff"])
    exif = image.getexif()
    if _IMAGE_DESCRIPTION in exif:
        try:
            settings = json.loads(exif[_IMAGE_DESCRIPTION]).get("diffdiff")
        except (ValueError, AttributeError):
            pass
    comment = exif.get_ifd(0x8769).get(_USER_COMMENT) or exif.get(_USER_COMMENT)
    if parameters is None and isinstance(comment, bytes) and comment.startswith(b"UNICODE\0"):
        parameters = comment[8:].decode("utf-16-be", errors="replace")
    return settings, parameters
