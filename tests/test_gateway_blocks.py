"""A CAR imported with ``dstore import --blocks``: every block, of any codec, served by CID from a peer.

The CAR is built here with dstore's own encoders and holds what the IPFS
gateway conformance fixtures hold: a DAG-CBOR root, a DAG-JSON block, UnixFS
files whose raw leaves are blocks (not chunks), a file with a leaf missing,
a CIDv0 DAG, and a block hashed with sha2-512 (which dstore cannot verify,
so it is skipped, never kept). The real CLI imports it into a real peer;
every answer is read over HTTP and checked against its CID here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
from multiformats.multihash import Multihash
from peerutil import running_peers
from test_gateway import car_blocks, check_block, fetch

from dstore.format import cbor
from dstore.format.car import CarReader, encode_car
from dstore.format.cid import CID, DAG_CBOR, DAG_PB, RAW, cid_to_text, make_cid
from dstore.format.dagpb import PBLink, decode_varint, encode_node
from dstore.format.unixfs import T_DIRECTORY, T_FILE, UnixFSData, encode_data

TOKEN = "blocks-token"
DAG_JSON = 0x0129
SHA2_512 = 0x13


def sha_cid(codec: int, block: bytes) -> CID:
    return make_cid(codec, block, "sha2-256")


def file_node(leaves: list[bytes]) -> bytes:
    sizes = [len(leaf) for leaf in leaves]
    links = [PBLink(sha_cid(RAW, leaf).to_bytes(), "", len(leaf)) for leaf in leaves]
    return encode_node(links, encode_data(UnixFSData(type=T_FILE, filesize=sum(sizes), blocksizes=sizes)))


def folder(entries: dict[str, tuple[CID, int]]) -> bytes:
    links = [PBLink(c.to_bytes(), name, size) for name, (c, size) in sorted(entries.items())]
    return encode_node(links, encode_data(UnixFSData(type=T_DIRECTORY)))


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("blocks")
    leaves = [os.urandom(1000), os.urandom(1000), os.urandom(500)]
    multi = file_node(leaves)  # 2500 bytes in three raw leaves, all held
    gap_leaves = [b"A" * 300, b"B" * 300, b"C" * 300]
    gap = file_node(gap_leaves)  # its middle leaf is not in the CAR, no folder holds it
    hello = b"hello world\n"
    page = b"<!DOCTYPE html><title>a page</title>\n"
    site = folder({"index.html": (sha_cid(RAW, page), len(page))})
    accents = folder({"file-\u017a.txt": (sha_cid(RAW, hello), len(hello))})
    top = folder(
        {
            "site": (sha_cid(DAG_PB, site), len(site) + len(page)),
            "\u0105": (sha_cid(DAG_PB, accents), len(accents) + len(hello)),
            "multi.txt": (sha_cid(DAG_PB, multi), len(multi) + 2500),
            "hello.txt": (sha_cid(RAW, hello), len(hello)),
            "hello-again.txt": (sha_cid(RAW, hello), len(hello)),  # the same block twice in the DAG
        }
    )
    top_cid = sha_cid(DAG_PB, top)
    cbor_root = cbor.encode({"name": "a dag-cbor root", "files": top_cid})
    cbor_cid = sha_cid(DAG_CBOR, cbor_root)
    json_block = b'{"hello":"dag-json"}'
    json_cid = sha_cid(DAG_JSON, json_block)
    absent = sha_cid(DAG_PB, file_node([b"nowhere"]))  # a node that is in no CAR
    broken = folder({"gone": (absent, 4)})  # a folder whose entry's node is missing
    bare = encode_node([PBLink(sha_cid(RAW, hello).to_bytes(), "x", len(hello))])  # dag-pb, no UnixFS Data
    v0_leaf = encode_node([], encode_data(UnixFSData(type=T_FILE, data=b"a CIDv0 file", filesize=12)))
    v0_cid = CID.decode(str(CID(0, DAG_PB, Multihash.wrap(0x12, hashlib.sha256(v0_leaf).digest()))))
    odd = b"hashed with sha2-512"
    odd_cid = CID(1, RAW, Multihash.wrap(SHA2_512, hashlib.sha512(odd).digest()))
    blocks = [
        (cbor_cid, cbor_root),
        (top_cid, top),
        (sha_cid(DAG_PB, multi), multi),
        *[(sha_cid(RAW, leaf), leaf) for leaf in leaves],
        (sha_cid(RAW, hello), hello),
        (sha_cid(DAG_PB, site), site),
        (sha_cid(RAW, page), page),
        (sha_cid(DAG_PB, accents), accents),
        (sha_cid(DAG_PB, gap), gap),
        (sha_cid(RAW, gap_leaves[0]), gap_leaves[0]),
        (sha_cid(RAW, gap_leaves[2]), gap_leaves[2]),
        (json_cid, json_block),
        (sha_cid(DAG_PB, broken), broken),
        (sha_cid(DAG_PB, bare), bare),
        (v0_cid, v0_leaf),
        (odd_cid, odd),
    ]
    car = tmp / "mixed.car"
    car.write_bytes(encode_car([cbor_cid, json_cid], blocks))
    with running_peers(tmp, 1, token=TOKEN) as peers:
        env = {**os.environ, "DSTORE_HOME": str(tmp / "store"), "DSTORE_PEERS": peers[0].url, "DSTORE_TOKEN": TOKEN}
        proc = subprocess.run(
            [sys.executable, "-m", "dstore", "import", "--blocks", "--json", "--shards", "1+0", str(car)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        yield {
            "url": peers[0].url,
            "result": json.loads(proc.stdout),
            "blocks": blocks,
            "cbor": cbor_cid,
            "json": json_cid,
            "odd": odd_cid,
            "top": top_cid,
            "multi": leaves,
            "gap": (sha_cid(DAG_PB, gap), gap_leaves),
            "hello": hello,
            "v0": v0_cid,
            "site": sha_cid(DAG_PB, site),
            "broken": sha_cid(DAG_PB, broken),
            "bare": (sha_cid(DAG_PB, bare), bare),
            "page": page,
        }


def test_every_verifiable_block_is_served_raw_by_its_cid(held) -> None:
    result = held["result"]
    assert result["blocks"] == len(held["blocks"]) - 1
    assert result["skipped_blocks"] == [cid_to_text(held["odd"])]  # never kept unverified
    assert result["roots"] == [cid_to_text(held["cbor"]), cid_to_text(held["json"])]
    for cid, block in held["blocks"]:
        status, headers, body = fetch(f"{held['url']}/ipfs/{cid_to_text(cid)}?format=raw")
        if cid == held["odd"]:
            assert status == 404
            continue
        assert status == 200, (cid_to_text(cid), body)
        assert check_block(cid, body) == block
        assert headers["Content-Type"] == "application/vnd.ipld.raw"


def test_files_of_held_blocks_read_whole_by_range_and_as_car(held) -> None:
    url, top = held["url"], cid_to_text(held["top"])
    whole = b"".join(held["multi"])
    status, _, body = fetch(f"{url}/ipfs/{top}/multi.txt")
    assert (status, body) == (200, whole)
    status, headers, body = fetch(f"{url}/ipfs/{top}/multi.txt", headers={"Range": "bytes=900-1099"})
    assert (status, body, headers["Content-Range"]) == (206, whole[900:1100], "bytes 900-1099/2500")
    status, headers, body = fetch(f"{url}/ipfs/{top}/multi.txt", headers={"Range": "bytes=6-16,0-4"})
    assert (status, body, headers["Content-Range"]) == (206, whole[6:17], "bytes 6-16/2500")  # the first range
    status, _, body = fetch(f"{url}/ipfs/{top}/hello.txt")
    assert (status, body) == (200, held["hello"])
    # A CAR of the file: the path's blocks, then the file's, each verified by the reader.
    status, headers, body = fetch(f"{url}/ipfs/{top}/multi.txt?format=car")
    assert status == 200
    assert headers["Accept-Ranges"] == "none"  # made while sent: resumed with entity-bytes, not Range
    order = car_blocks(body)[2]
    assert {c.to_bytes() for c in order} >= {held["top"].to_bytes()} | {
        sha_cid(RAW, x).to_bytes() for x in held["multi"]
    }


def test_entity_bytes_avoid_a_missing_leaf(held) -> None:
    url = held["url"]
    gap_cid, leaves = held["gap"]
    text = cid_to_text(gap_cid)
    status, _, body = fetch(f"{url}/ipfs/{text}?format=car&dag-scope=entity&entity-bytes=0:299")
    assert status == 200
    assert car_blocks(body)[2] == [gap_cid, sha_cid(RAW, leaves[0])]
    status, _, body = fetch(f"{url}/ipfs/{text}?format=car&dag-scope=entity&entity-bytes=600:*")
    assert status == 200
    assert car_blocks(body)[2] == [gap_cid, sha_cid(RAW, leaves[2])]


def test_dag_json_and_dag_cbor_blocks_as_car(held) -> None:
    url = held["url"]
    for cid in (held["json"], held["cbor"]):
        status, headers, body = fetch(f"{url}/ipfs/{cid_to_text(cid)}?format=car&dag-scope=block")
        assert status == 200, body
        roots, blocks, _ = car_blocks(body)
        assert roots == [cid] and cid.to_bytes() in blocks


def test_a_bad_car_stores_nothing(dstore, tmp_path: Path, home: Path) -> None:
    good = b"a good block"
    car = tmp_path / "bad.car"
    car.write_bytes(encode_car([sha_cid(RAW, good)], [(sha_cid(RAW, good), good), (sha_cid(RAW, b"x"), b"y")]))
    result = dstore("import", "--blocks", car, check=False)
    assert result.code == 6, result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not [p for p in home.rglob("*") if p.is_file() and p.suffix == ".json"]  # no pointer, no dataset


def test_blocks_dataset_ids_differ_by_content_and_plain_imports_keep_theirs(dstore, tmp_path: Path) -> None:
    ids = []
    for n in range(2):
        block = f"block {n}".encode()
        car = tmp_path / f"{n}.car"
        car.write_bytes(encode_car([sha_cid(RAW, block)], [(sha_cid(RAW, block), block)]))
        ids.append(json.loads(dstore("import", "--blocks", "--json", car).out)["cid"])
    assert ids[0] != ids[1]
    # The same CAR without --blocks is a UnixFS import (a one-chunk file), a dataset of its own.
    plain = json.loads(dstore("import", "--json", tmp_path / "0.car").out)
    assert plain["cid"] != ids[0] and plain["root"] == cid_to_text(sha_cid(RAW, b"block 0"))


def test_format_query_wins_over_accept_and_names_the_download(held) -> None:
    url, hello = held["url"], cid_to_text(sha_cid(RAW, held["hello"]))
    car = {"Accept": "application/vnd.ipld.car"}
    status, headers, body = fetch(f"{url}/ipfs/{hello}?format=raw&filename=greeting.bin", headers=car)
    assert (status, body, headers["Content-Type"]) == (200, held["hello"], "application/vnd.ipld.raw")
    assert headers["Content-Disposition"] == 'attachment; filename="greeting.bin"'
    status, headers, _ = fetch(f"{url}/ipfs/{hello}?format=car", headers={"Accept": "application/vnd.ipld.raw"})
    assert (status, headers["Content-Type"].split(";")[0]) == (200, "application/vnd.ipld.car")


def test_car_dups_y_sends_a_block_each_time_the_dag_links_it(held) -> None:
    url, top = held["url"], cid_to_text(held["top"])
    hello = sha_cid(RAW, held["hello"])
    for headers, query in (({"Accept": "application/vnd.ipld.car; dups=y"}, ""), ({}, "&car-dups=y")):
        status, answer, body = fetch(f"{url}/ipfs/{top}?format=car{query}", headers=headers)
        assert status == 200 and "dups=y" in answer["Content-Type"]
        assert _car_cids(body).count(hello) == 3  # as often as the walk meets it (three names link it)
    status, answer, body = fetch(f"{url}/ipfs/{top}?format=car")
    assert "dups=n" in answer["Content-Type"] and _car_cids(body).count(hello) == 1


def test_a_cidv0_request_gets_cidv0_back(held) -> None:
    v0 = held["v0"]
    status, _, body = fetch(f"{held['url']}/ipfs/{v0}?format=car")
    assert status == 200
    roots = _car_roots(body)
    assert [str(r) for r in roots] == [str(v0)] and roots[0].version == 0
    status, _, body = fetch(f"{held['url']}/ipfs/{v0}")
    assert (status, body) == (200, b"a CIDv0 file")


def _car_cids(data: bytes) -> list[CID]:
    """Every section's CID in order, duplicates kept (CarReader verifies each block)."""
    return [cid for cid, _ in CarReader(data, verify=True)]


def _car_roots(data: bytes) -> list[CID]:
    """The header's roots as written (CarReader turns CIDv0 into v1; this does not)."""
    n, at = decode_varint(data, 0)
    header = cbor.decode(data[at : at + n])
    return list(header["roots"])


def test_ipld_blocks_answered_as_stored_never_converted(held) -> None:
    url, js, cb = held["url"], cid_to_text(held["json"]), cid_to_text(held["cbor"])
    status, headers, body = fetch(f"{url}/ipfs/{js}")
    assert (status, body, headers["Content-Type"]) == (200, b'{"hello":"dag-json"}', "application/vnd.ipld.dag-json")
    assert headers["Content-Disposition"] == f'inline; filename="{js}.json"'
    assert headers["ETag"] == f'"{js}.dag-json"'
    status, headers, _ = fetch(f"{url}/ipfs/{js}?format=json")
    assert (status, headers["Content-Type"]) == (200, "application/json")  # same bytes, plain type
    status, headers, body = fetch(f"{url}/ipfs/{cb}", headers={"Accept": "application/cbor"})
    assert (status, headers["Content-Type"]) == (200, "application/cbor")
    assert headers["Content-Disposition"].startswith("attachment;")
    assert fetch(f"{url}/ipfs/{js}?format=dag-cbor")[0] == 406  # IPIP-0524: no codec conversion
    assert fetch(f"{url}/ipfs/{cid_to_text(held['top'])}?format=dag-json")[0] == 406
    status, headers, body = fetch(f"{url}/ipfs/{js}", headers={"Range": "bytes=2-6"})
    assert (status, body) == (206, b"hello")
    status, headers, body = fetch(f"{url}/ipfs/{js}/", headers={"Accept": "text/html"})
    assert status == 200 and headers["ETag"] == f'"DagIndex-{js}"' and b"</html>" in body
    assert "Content-Disposition" not in headers


def test_paths_follow_dag_cbor_links_into_unixfs(held) -> None:
    url, cb = held["url"], cid_to_text(held["cbor"])
    status, headers, body = fetch(f"{url}/ipfs/{cb}/files/hello.txt")
    assert (status, body) == (200, held["hello"])
    assert headers["X-Ipfs-Roots"].split(",")[:2] == [cb, cid_to_text(held["top"])]
    status, _, body = fetch(f"{url}/ipfs/{cb}/files/hello.txt?format=car")
    assert status == 200
    assert car_blocks(body)[2][:2] == [held["cbor"], held["top"]]  # the path's proof first
    assert fetch(f"{url}/ipfs/{cb}/name")[0] == 501  # ends inside the block, at a string
    assert fetch(f"{url}/ipfs/{cb}/nothing-here")[0] == 404


def test_only_if_cached_for_a_block_not_here_is_412(held) -> None:
    missing = cid_to_text(sha_cid(RAW, b"not in any CAR"))
    assert fetch(f"{held['url']}/ipfs/{missing}", "HEAD", {"Cache-Control": "only-if-cached"})[0] == 412
    hello = cid_to_text(sha_cid(RAW, held["hello"]))
    assert fetch(f"{held['url']}/ipfs/{hello}", "HEAD", {"Cache-Control": "only-if-cached"})[0] == 200


def test_raw_block_with_a_range_is_206(held) -> None:
    hello = cid_to_text(sha_cid(RAW, held["hello"]))
    raw = {"Accept": "application/vnd.ipld.raw", "Range": "bytes=6-10"}
    status, headers, body = fetch(f"{held['url']}/ipfs/{hello}", headers=raw)
    assert (status, body, headers["Content-Range"]) == (206, b"world", f"bytes 6-10/{len(held['hello'])}")


def test_folder_pages_slash_redirect_etags_and_links(held) -> None:
    url, top = held["url"], cid_to_text(held["top"])
    status, headers, _ = fetch_no_redirect(f"{url}/ipfs/{top}/%C4%85")
    assert (status, headers["Location"]) == (301, f"/ipfs/{top}/%C4%85/")
    status, headers, body = fetch(f"{url}/ipfs/{top}/%C4%85/")
    assert headers["Cache-Control"] == "public, max-age=604800, stale-while-revalidate=2678400"  # a made page
    # The path as UTF-8 bytes, as gateways send it (http.client reads header bytes as latin-1).
    assert status == 200 and headers["X-Ipfs-Path"].encode("latin-1").decode() == f"/ipfs/{top}/\u0105/"
    assert headers["ETag"].startswith('"DirIndex-') and headers["ETag"].endswith(
        f'_CID-{headers["X-Ipfs-Roots"].split(",")[-1]}"'
    )
    page = body.decode()
    assert f'/ipfs/<a href="/ipfs/{top}">{top}</a>/<a href="/ipfs/{top}/%C4%85">\u0105</a>' in page  # breadcrumbs
    assert f'<a href="/ipfs/{top}/%C4%85/..">..</a>' in page
    assert f'<a href="/ipfs/{top}/%C4%85/file-%C5%BA.txt">file-\u017a.txt</a>' in page
    hello = cid_to_text(sha_cid(RAW, held["hello"]))
    assert f'href="/ipfs/{hello}?filename=file-%25C5%25BA.txt"' in page
    # A folder with an index.html is that page, under the folder's ETag.
    site = cid_to_text(held["site"])
    status, headers, body = fetch(f"{url}/ipfs/{top}/site/")
    assert (status, body, headers["ETag"]) == (200, held["page"], f'"{site}"')
    assert fetch(f"{url}/ipfs/{top}/site/", headers={"If-None-Match": f'"{site}"'})[0] == 304


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def fetch_no_redirect(url: str) -> tuple[int, Message, bytes]:
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=60) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_tar_of_a_folder_and_of_a_file(held) -> None:
    url, top = held["url"], cid_to_text(held["top"])
    status, headers, body = fetch(f"{url}/ipfs/{top}?format=tar")
    assert status == 200 and headers["Content-Type"] == "application/x-tar"
    assert headers["ETag"] == f'W/"{top}.x-tar"' and headers["Content-Disposition"].startswith("attachment;")
    with tarfile.open(fileobj=io.BytesIO(body)) as archive:
        got = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
        dirs = sorted(m.name for m in archive.getmembers() if m.isdir())
    assert dirs == [top, f"{top}/site", f"{top}/\u0105"]
    assert got == {
        f"{top}/hello-again.txt": held["hello"],
        f"{top}/hello.txt": held["hello"],
        f"{top}/multi.txt": b"".join(held["multi"]),
        f"{top}/site/index.html": held["page"],
        f"{top}/\u0105/file-\u017a.txt": held["hello"],
    }
    hello = cid_to_text(sha_cid(RAW, held["hello"]))
    status, headers, body = fetch(f"{url}/ipfs/{hello}?filename=t%C3%A9st.tar", headers={"Accept": "application/x-tar"})
    assert status == 200
    assert headers["Content-Disposition"] == "attachment; filename=\"t_st.tar\"; filename*=UTF-8''t%C3%A9st.tar"
    with tarfile.open(fileobj=io.BytesIO(body)) as archive:
        assert archive.extractfile(hello).read() == held["hello"]


def test_tar_of_a_tree_that_does_not_read_is_an_error_status(held) -> None:
    status, headers, body = fetch(f"{held['url']}/ipfs/{cid_to_text(held['broken'])}?format=tar")
    assert status == 404 and json.loads(body)["code"] == "not_found"  # before any byte of an archive


def test_identity_blocks_are_never_written_to_a_car(held) -> None:
    inline = CID(1, RAW, Multihash.wrap(0x00, b"hello inline"))
    for accept in ("application/vnd.ipld.car; dups=y", "application/vnd.ipld.car"):
        status, _, body = fetch(f"{held['url']}/ipfs/{cid_to_text(inline)}", headers={"Accept": accept})
        assert status == 200 and _car_cids(body) == []


def test_ipns_peer_ids_redirect_to_their_canonical_name(held) -> None:
    url = held["url"]
    status, headers, _ = fetch_no_redirect(f"{url}/ipns/12D3KooWRBy97UB99e3J6hiPesre1MZeuNQvfan4gBziswrRJsNK/root2/")
    assert (status, headers["Location"]) == (
        302,
        "/ipns/k51qzi5uqu5dlvj2baxnqndepeb86cbk3ng7n3i46uzyxzyqj2xjonzllnv0v8/root2/",
    )
    status, headers, _ = fetch_no_redirect(f"{url}/ipns/QmcJM7PRfkSbcM5cf1QugM5R37TLRKyJGgBEhXjLTB8uA2/root2/")
    assert (status, headers["Location"]) == (
        302,
        "/ipns/k2k4r8ol4m8kkcqz509c1rcjwunebj02gcnm5excpx842u736nja8ger/root2/",
    )
    status, _, body = fetch(f"{url}/ipns/example.org/")
    assert status == 501 and json.loads(body)["code"] == "not_implemented"  # IPNS/DNSLink are not resolved


def test_a_truncated_car_stores_nothing(dstore, tmp_path: Path, home: Path) -> None:
    blocks = [(sha_cid(RAW, f"block {i}".encode()), f"block {i}".encode()) for i in range(3)]
    whole = encode_car([blocks[0][0]], blocks)
    car = tmp_path / "cut.car"
    car.write_bytes(whole[:-3])
    result = dstore("import", "--blocks", car, check=False)
    assert result.code == 5 and len(result.err.strip().splitlines()) == 1, result.err
    assert not [p for p in home.rglob("*") if p.is_file() and p.suffix == ".json"]


def test_a_dag_pb_block_without_unixfs_is_a_block_not_a_file(held) -> None:
    cid, block = held["bare"]
    url = f"{held['url']}/ipfs/{cid_to_text(cid)}"
    assert fetch(f"{url}?format=raw")[2] == block
    assert car_blocks(fetch(f"{url}?format=car")[2])[1] == {cid.to_bytes(): block}
    status, _, body = fetch(url)
    assert status == 501 and json.loads(body)["code"] == "not_implemented"
