"""IPLD blocks that are not UnixFS (DAG-JSON, DAG-CBOR, JSON, CBOR) as the path gateway answers them.

Such blocks are answered as they are stored, never converted between codecs
(IPIP-0524): a ``format`` of the block's own family (``dag-json``/``json``,
``dag-cbor``/``cbor``) names its bytes, with that format's Content-Type; a
path may follow links of DAG-CBOR and DAG-JSON blocks.
"""

from __future__ import annotations

import base64
import html
import json

from dstore.errors import BadCID, FormatError
from dstore.format import cbor
from dstore.format.cid import DAG_CBOR, parse_cid

__all__ = ["CODEC_FORMATS", "FORMAT_TYPES", "IPLD_CODECS", "decode_ipld", "ipld_html", "same_family"]

DAG_JSON = 0x0129
JSON = 0x0200
CBOR = 0x51
#: Codecs answered as they are stored (IPLD data, not UnixFS): codec -> (its format, its family).
CODEC_FORMATS = {DAG_JSON: "dag-json", DAG_CBOR: "dag-cbor", JSON: "json", CBOR: "cbor"}
#: Codecs whose links a path may follow (DAG-CBOR tag 42, DAG-JSON ``{"/": CID}``).
IPLD_CODECS = (DAG_CBOR, DAG_JSON)
#: The Content-Type of each format, and whether a browser shows it (inline) or saves it.
FORMAT_TYPES = {
    "dag-json": ("application/vnd.ipld.dag-json", "inline", "json"),
    "json": ("application/json", "inline", "json"),
    "dag-cbor": ("application/vnd.ipld.dag-cbor", "attachment", "cbor"),
    "cbor": ("application/cbor", "attachment", "cbor"),
}


def same_family(fmt: str, codec: int) -> bool:
    """Whether ``fmt`` names the bytes of a ``codec`` block as they are (codecs are never converted)."""
    native = CODEC_FORMATS.get(codec)
    return native is not None and FORMAT_TYPES[native][2] == FORMAT_TYPES[fmt][2]


def _dag_json_value(obj: dict[str, object]) -> object:
    if list(obj) == ["/"]:
        value = obj["/"]
        if isinstance(value, str):
            try:
                return parse_cid(value)
            except BadCID as e:
                raise FormatError(f"DAG-JSON link {value[:80]!r}: {e}") from e
        if isinstance(value, dict) and list(value) == ["bytes"] and isinstance(value["bytes"], str):
            return base64.b64decode(value["bytes"] + "==")
    return obj


def decode_ipld(codec: int, data: bytes) -> object:
    """A DAG-CBOR or DAG-JSON block as Python values, links as CIDs (FormatError if it does not decode)."""
    if codec == DAG_CBOR:
        return cbor.decode(data)
    try:
        return json.loads(data, object_hook=_dag_json_value)
    except (ValueError, RecursionError) as e:
        raise FormatError(f"not a DAG-JSON block: {e}") from e


def ipld_html(path: str, cid: str, fmt: str, size: int) -> str:
    """The page a browser gets for an IPLD block: what it is and how to fetch it."""
    title = html.escape(path)
    links = "".join(f'<li><a href="?format={f}">{f}</a></li>' for f in ("raw", "car", fmt))
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>"
        f"{title}</title></head><body><h1>{title}</h1><p>A {html.escape(fmt)} block of {size} bytes: "
        f"<code>{html.escape(cid)}</code></p><p>Download as:</p><ul>{links}</ul></body></html>\n"
    )
