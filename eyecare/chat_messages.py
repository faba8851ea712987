"""OpenAI chat messages -> what EyecareGPT takes: text messages with one ``<image>`` placeholder per image,
and the images (bytes or paths) in placeholder order. Shared by `eyecare serve` and eyecare.endpoint's
in-process model, so that both read a conversation the same way.

A message's ``content`` is a string or a list of parts: ``{"type": "text", "text": ...}`` and
``{"type": "image_url", "image_url": {"url": ...}}``. Each image part becomes ``<image>\\n`` at its place
(an image before the question, as LLaVA and ``EyecareGPT.chat`` put it). Image URLs may be
``data:image/...;base64,...``; local paths (or ``file://`` URLs) only when ``local_images`` names a folder,
and only files inside it; remote URLs never (nothing here fetches from the network).

Every problem raises MessageError (a ValueError) saying which message and part is wrong.
"""
from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

ROLES = ("system", "user", "assistant")


class MessageError(ValueError):
    """A chat message the model cannot take (bad role, part, image URL or path)."""


def image_part(image) -> dict:
    """An ``image_url`` content part carrying `image` (a path or the file's bytes) as a base64 data URL."""
    data = image if isinstance(image, (bytes, bytearray)) else Path(image).read_bytes()
    return {"type": "image_url", "image_url": {"url": "data:image/*;base64," + base64.b64encode(data).decode("ascii")}}


def _decode_data_url(url: str, where: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise MessageError(f"{where}: a data URL must be data:<type>;base64,<data>")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MessageError(f"{where}: the data URL's base64 is malformed") from None
    if not data:
        raise MessageError(f"{where}: the data URL holds no bytes")
    return data


def _local_path(url: str, local_images, where: str) -> str:
    if local_images is None:
        raise MessageError(f"{where}: image URLs must be base64 data: URLs (local paths need the server "
                           "started with --allow-local-images DIR)")
    raw = unquote(urlparse(url).path) if url.startswith("file://") else url
    root = Path(local_images).resolve()
    path = Path(root, raw).resolve()  # an absolute raw path replaces root; a relative one is taken inside it
    if path != root and root not in path.parents:
        raise MessageError(f"{where}: {raw!r} is outside the allowed image folder")
    if not path.is_file():
        raise MessageError(f"{where}: no image file {raw!r} in the allowed image folder")
    return os.fspath(path)


def _image_of(part: dict, local_images, where: str):
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str) or not url:
        raise MessageError(f"{where}: an image_url part needs image_url.url")
    if url.startswith("data:"):
        return _decode_data_url(url, where)
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https", "ftp"):
        raise MessageError(f"{where}: remote image URLs are not fetched; send the image as a base64 data: URL")
    return _local_path(url, local_images, where)


def split_messages(messages, *, image_token: str = "<image>", local_images=None) -> tuple[list, list]:
    """-> (messages with string contents and image placeholders, images in placeholder order)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise MessageError("messages must be a non-empty list")
    texts, images = [], []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise MessageError(f"{where} must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise MessageError(f"{where}: role must be one of {', '.join(ROLES)}, not {role!r}")
        content = message.get("content")
        if content is None and role == "assistant":
            content = ""
        if isinstance(content, str):
            if image_token in content:
                raise MessageError(f"{where}: the text contains {image_token!r}; send images as image_url parts")
            texts.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise MessageError(f"{where}: content must be a string or a list of parts")
        pieces = []
        for j, part in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                if image_token in part["text"]:
                    raise MessageError(f"{at}: the text contains {image_token!r}; send images as image_url parts")
                pieces.append(part["text"])
            elif kind == "image_url":
                if role != "user":
                    raise MessageError(f"{at}: only user messages may carry images")
                images.append(_image_of(part, local_images, at))
                pieces.append(image_token + "\n")
            else:
                raise MessageError(f"{at}: a part must be {{'type': 'text', 'text': ...}} or "
                                   f"{{'type': 'image_url', 'image_url': {{'url': ...}}}}")
        texts.append({"role": role, "content": "".join(pieces)})
    if texts[-1]["role"] != "user":
        raise MessageError("the last message must be the user's")
    return texts, images
