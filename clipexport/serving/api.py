"""The request rules of serve's HTTP routes, apart from any web framework: what a body of each
route must hold, parsed once into typed requests, each mistake one `InputError` line (the app
answers it 4xx). The items themselves (an image that does not decode, a bomb, text that is not
UTF-8) are checked where every surface checks them: the python models, through `clipexport.inputs`
and the runtime.

- `/v1/embeddings` (OpenAI's schema): `model`, `input` (a string or a list of them),
  `encoding_format` ("float" or "base64": little-endian float32, what the `openai` client decodes),
  `dimensions` (only the model's own: CLIP embeddings are not Matryoshka-trained, a cut one would
  rank worse without saying so), `user` (ignored), and `modality` ("text" or "image", infinity's
  extension) — an image input is a data URI, bare base64, or an http(s) URL where the operator
  allowed fetching (`--allow-url-fetch`).
- `/embed/text`: a JSON list of strings (or one string).
- `/search`: `{"text": str}` or `{"image": data URI / base64 / URL}`, and `k`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from clipexport.errors import InputError
from clipexport.inputs import check_text

# OpenAI's own bound on `input` items per embeddings request; the app splits them into the served
# model's max batch, so Triton's batcher sees requests it accepts.
MAX_ITEMS_PER_REQUEST = 2048
DEFAULT_K = 10
OPENAI_FIELDS = ("model", "input", "encoding_format", "dimensions", "user", "modality")
_DATA_URI = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[\w.+-]+)*);base64,", re.ASCII)


class Modality(str, Enum):
    TEXT = "text"
    IMAGE = "image"


class Encoding(str, Enum):
    FLOAT = "float"
    BASE64 = "base64"


@dataclass(frozen=True)
class ImageSource:
    """An image item: its bytes, or (fetching allowed) the URL to fetch them from."""

    data: bytes = b""
    url: str = ""


@dataclass(frozen=True)
class EmbeddingsRequest:
    model: str
    modality: Modality
    texts: tuple[str, ...] = ()
    images: tuple[ImageSource, ...] = ()
    encoding: Encoding = Encoding.FLOAT

    @property
    def count(self) -> int:
        return len(self.texts) + len(self.images)


@dataclass(frozen=True)
class SearchRequest:
    k: int
    text: str | None = None
    image: ImageSource | None = None


def _choice(value: Any, kind: type[Enum], field: str) -> Any:
    allowed = ", ".join(repr(member.value) for member in kind)  # type: ignore[attr-defined]
    if not isinstance(value, str):
        raise InputError(f"'{field}' must be one of {allowed}, got {value!r:.60}")
    try:
        return kind(value)
    except ValueError:
        raise InputError(f"'{field}' must be one of {allowed}, got {value!r:.60}") from None


def check_item_count(count: int, limit: int = MAX_ITEMS_PER_REQUEST) -> int:
    if count == 0:
        raise InputError("'input' holds no items; send at least one")
    if count > limit:
        raise InputError(f"'input' holds {count} items, over the limit of {limit} per request; split it")
    return count


def non_public(address: str) -> str | None:
    """What kind of non-public address an IP literal is ("loopback", "private", "link-local", ...),
    or None for a public one or a host name. An IPv4-mapped IPv6 address is judged as its IPv4.
    With --allow-url-fetch the server fetches public addresses only (unless --url-fetch-private):
    otherwise a client could make it reach what only it can reach (its own loopback ports, a
    cloud's metadata service at 169.254.169.254, the private network)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "link_local", "unspecified", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-global"


def image_source(item: Any, name: str, allow_url_fetch: bool) -> ImageSource:
    """An image given in JSON: a data URI, bare base64, or an http(s) URL (fetched only where the
    operator allowed it)."""
    if not isinstance(item, str):
        raise InputError(f"{name} must be a string (a data URI, base64, or a URL), got {type(item).__name__}")
    text = item.strip()
    if text.lower().startswith(("http://", "https://")):
        if not allow_url_fetch:
            raise InputError(
                f"{name} is a URL, and this server does not fetch URLs; send the image itself (a data URI or "
                "base64), or ask the operator to start serve with --allow-url-fetch"
            )
        return ImageSource(url=text)
    found = _DATA_URI.match(text)
    if text.startswith("data:") and not found:
        raise InputError(f"{name} is a data URI without base64 data; send data:image/...;base64,<data>")
    if found and found.group("type") and not found.group("type").lower().startswith(("image/", "application/")):
        raise InputError(f"{name} is a data URI of {found.group('type')}, not an image")
    payload = text[found.end() :] if found else text
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{name} is neither a data URI, base64, nor an http(s) URL") from None
    if not data:
        raise InputError(f"{name} is empty")
    return ImageSource(data=data)


def parse_embeddings_request(body: Any, served: str, dim: int, allow_url_fetch: bool) -> EmbeddingsRequest:
    """An OpenAI embeddings request, checked field by field; `served` is the one model name."""
    if not isinstance(body, dict):
        raise InputError('the body must be a JSON object: {"model": ..., "input": ...}')
    unknown = sorted(set(body) - set(OPENAI_FIELDS))
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are {', '.join(OPENAI_FIELDS)}")
    for field in ("model", "input"):
        if field not in body:
            raise InputError(f"the request has no '{field}'")
    model = body["model"]
    if not isinstance(model, str):
        raise InputError(f"'model' must be a string, got {type(model).__name__}")
    if model != served:
        raise ModelNotFound(f"this server serves the model '{served}', not '{model[:80]}' (GET /v1/models lists it)")
    modality = _choice(body.get("modality", "text"), Modality, "modality")
    encoding = _choice(body.get("encoding_format") or "float", Encoding, "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or dimensions != dim):
        raise InputError(
            f"'dimensions' {dimensions!r:.20} is not this model's {dim}: CLIP embeddings are not trained to be "
            f"shortened; leave it out or send dimensions: {dim}"
        )
    items = body["input"]
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list):
        raise InputError(f"'input' must be a string or a list of strings, got {type(items).__name__}")
    check_item_count(len(items))
    if any(isinstance(x, int) or (isinstance(x, list) and x and isinstance(x[0], int)) for x in items[:1]):
        raise InputError(
            "'input' holds token ids; send text (this server tokenizes with the model's own tokenizer; "
            "LangChain's OpenAIEmbeddings: check_embedding_ctx_length=False)"
        )
    if modality is Modality.IMAGE:
        images = tuple(image_source(x, f"input[{i}]", allow_url_fetch) for i, x in enumerate(items))
        return EmbeddingsRequest(model, modality, images=images, encoding=encoding)
    texts = tuple(check_text(x, f"input[{i}]") for i, x in enumerate(items))
    return EmbeddingsRequest(model, modality, texts=texts, encoding=encoding)


def parse_texts(body: Any) -> list[str]:
    """/embed/text: a JSON list of strings, or one string."""
    if isinstance(body, str):
        body = [body]
    if not isinstance(body, list):
        raise InputError('the body must be a JSON list of strings, e.g. ["a photo of a cat"]')
    check_item_count(len(body))
    return [check_text(x, f"text #{i}") for i, x in enumerate(body)]


def parse_k(value: Any, rows: int) -> int:
    """A search's k: a positive integer no larger than the index (form fields arrive as text)."""
    from clipexport.search.searcher import check_k

    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return check_k(value, rows)


def parse_search_request(body: Any, rows: int, allow_url_fetch: bool) -> SearchRequest:
    if not isinstance(body, dict):
        raise InputError('the body must be a JSON object: {"text": "...", "k": 10} or {"image": "data:...", "k": 10}')
    unknown = sorted(set(body) - {"text", "image", "k"})
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are text, image, k")
    if ("text" in body) == ("image" in body):
        raise InputError("send one query: 'text' or 'image'")
    k = parse_k(body.get("k", min(DEFAULT_K, rows)), rows)
    if "text" in body:
        return SearchRequest(k, text=check_text(body["text"], "text"))
    return SearchRequest(k, image=image_source(body["image"], "image", allow_url_fetch))


def encode_embedding(row: np.ndarray, encoding: Encoding) -> Any:
    """One row as OpenAI's response carries it: a list of floats, or base64 of little-endian float32."""
    if encoding is Encoding.BASE64:
        return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
    return row.astype(np.float32).tolist()


class ModelNotFound(InputError):
    """A request named a model this server does not serve (HTTP 404)."""
