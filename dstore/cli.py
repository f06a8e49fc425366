"""The ``dstore`` command line: click commands, rich progress on stderr, exit codes.

This is the only place that prints to the user and exits. Every
:class:`dstore.errors.DstoreError` becomes one line on stderr and its exit
code (docs/cli.md lists them); anything else is a bug and still gets one line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from dstore.errors import DstoreError

if TYPE_CHECKING:  # the network client is loaded only when peers are used
    from dstore.net.gateways import GatewayClient
    from dstore.net.protocol import PeerClient

DEFAULT_SHARDS = "10+2"


def _printable(text: str) -> str:
    """``text`` with control and bidi characters escaped (``\\n``, ``\\x1b``, ``\\u202e``).

    Names come from datasets, hence from anyone: printed raw, a newline splits an error line in
    two and an escape sequence reaches the user's terminal (title, colours, clipboard).
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def _fail(message: str, code: int) -> None:
    click.echo(f"dstore: error: {_printable(message)}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns dstore errors into one line and an exit code, never a traceback.

    ``dstore peer`` is loaded only when asked for: the server's imports
    (aiohttp, cryptography, prometheus-client) would slow every command down.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "peer"])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "peer":
            from dstore.peer.cli import peer

            return peer
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DstoreError as e:
            _fail(str(e), e.exit_code)
        except _Terminated:
            _fail("terminated", 143)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except BrokenPipeError:
            sys.stderr.close()
            sys.exit(141)
        except OSError as e:
            _fail(f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}", 8)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT raises KeyboardInterrupt, so the same cleanup runs (exit 143)."""


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While writing an output, SIGTERM unwinds like Ctrl-C instead of killing the process mid-write."""

    def interrupt(signum: int, frame: object) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _progress(label: str, quiet: bool) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """(start(total), advance(n)) callbacks drawing a rich bar on stderr when it is a terminal."""
    if quiet or not sys.stderr.isatty():
        yield (lambda total: None), (lambda n: None)
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=__import__("rich.console").console.Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)
        yield (lambda total: bar.update(task, total=total)), (lambda n: bar.advance(task, n))


def _store(home: str | None) -> Any:
    from dstore.store import Store

    return Store(home)


home_option = click.option(
    "--home",
    envvar="DSTORE_HOME",
    type=click.Path(file_okay=False),
    help="Store folder (default: $DSTORE_HOME, else ~/.local/share/dstore).",
)


def _remember_token_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    # Kept aside rather than passed to every command: only _peers needs it.
    ctx.meta["dstore.token_file"] = value


def peers_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--peers``, ``--token`` and ``--token-file``: with peers, data and metadata live on storage peers."""
    f = click.option(
        "--token-file",
        metavar="PATH",
        expose_value=False,
        callback=_remember_token_file,
        help="Read the write token from PATH (else $DSTORE_TOKEN_FILE); unlike --token, not visible in ps.",
    )(f)
    f = click.option("--token", help="Write token for the peers (else $DSTORE_TOKEN).")(f)
    return click.option(
        "--peers", "peer_urls", metavar="URL,URL", help="Storage peers to use (else $DSTORE_PEERS; none: local only)."
    )(f)


@contextmanager
def _peers(peer_urls: str | None, token: str | None) -> Iterator[PeerClient | None]:
    """A connected SyncPeerSet, or None when no peers are configured."""
    if not (peer_urls or os.environ.get("DSTORE_PEERS")):
        yield None  # local only: don't pay for importing the network client
        return
    from dstore.net import SyncPeerSet, peers_from_env, token_from_env

    urls = peers_from_env(peer_urls)
    if not urls:
        yield None
        return
    token_file = click.get_current_context().meta.get("dstore.token_file")
    peers = SyncPeerSet.connect(urls, token_from_env(token, token_file))
    try:
        yield peers
    finally:
        peers.close()


def _remember_gateways(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    # Kept aside like --token-file: only _gateways needs it.
    ctx.meta["dstore.gateways"] = value


gateways_option = click.option(
    "--gateways",
    metavar="URL,URL",
    expose_value=False,
    callback=_remember_gateways,
    help="Trustless IPFS gateways to read what no peer has from, every block verified (else $DSTORE_GATEWAYS).",
)


@contextmanager
def _gateways() -> Iterator[GatewayClient | None]:
    """A GatewayClient for ``--gateways`` / ``$DSTORE_GATEWAYS``, or None when none is given."""
    from dstore.net.config import gateways_from_env

    urls = gateways_from_env(click.get_current_context().meta.get("dstore.gateways"))
    if not urls:
        yield None
        return
    from dstore.net.gateways import GatewayClient

    with GatewayClient(urls) as client:
        yield client


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dstore")
def main() -> None:
    """dstore: content-addressed, erasure-coded storage for ML datasets.

    \b
      dstore add ./data           store a file or folder, print its dataset ID
      dstore get CID -o ./data    write it back, every byte verified
    """


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--shards",
    default=DEFAULT_SHARDS,
    show_default=True,
    metavar="K+M",
    help="Erasure coding: K data + M parity shards per pack (M may be 0).",
)
@click.option(
    "--profile",
    type=click.Choice(["dstore", "unixfs-v1-2025"]),
    default="dstore",
    show_default=True,
    help="How files are cut and laid out: dstore's own (FastCDC, BLAKE3) or IPIP-0499's unixfs-v1-2025 "
    "(fixed 1 MiB chunks, sha2-256: the root CID equals Kubo's with that profile).",
)
@click.option(
    "--hash",
    "hash_name",
    type=click.Choice(["blake3", "sha2-256"]),
    help="Hash of every CID of the dataset (default: the profile's; unixfs-v1-2025 takes sha2-256 only).",
)
@click.option("--name", help="Dataset name recorded in the manifest (part of the ID).")
@click.option("--license", "license_", help="License recorded in the manifest (part of the ID).")
@click.option("--description", help="Description recorded in the manifest (part of the ID).")
@click.option("--parent", metavar="CID", help="Dataset ID of the previous version.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the ID.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@home_option
@peers_options
def add(
    path: Path,
    shards: str,
    profile: str,
    hash_name: str | None,
    name: str | None,
    license_: str | None,
    description: str | None,
    parent: str | None,
    as_json: bool,
    quiet: bool,
    home: str | None,
    peer_urls: str | None,
    token: str | None,
) -> None:
    """Add the file or folder PATH; print its dataset ID (the last line of stdout)."""
    from dstore.format.cid import parse_cid
    from dstore.ingest.add import ShardSpec
    from dstore.ingest.add import add as do_add

    spec = ShardSpec.parse(shards)
    parent_cid = parse_cid(parent) if parent else None
    meta = {k: v for k, v in (("name", name), ("license", license_), ("description", description)) if v}
    with _store(home) as store, _peers(peer_urls, token) as peers, _progress("adding", quiet) as (start, advance):
        result = do_add(
            path,
            store,
            spec,
            hash_name=hash_name,
            profile=profile,
            meta=meta,
            parent=parent_cid,
            progress=advance,
            on_start=start,
            peers=peers,
        )
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        click.echo(result.dataset.encode("base32"))


@main.command(name="import")
@click.argument("car", type=click.Path(path_type=Path))
@click.option(
    "--shards",
    default=DEFAULT_SHARDS,
    show_default=True,
    metavar="K+M",
    help="Erasure coding: K data + M parity shards per pack (M may be 0).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per dataset instead of its ID.")
@click.option(
    "--blocks",
    is_flag=True,
    help="Keep every block of the CAR, of any codec, as a block (one dataset holding them) instead of "
    "turning its UnixFS roots into datasets.",
)
@home_option
@peers_options
def import_(
    car: Path, shards: str, as_json: bool, blocks: bool, home: str | None, peer_urls: str | None, token: str | None
) -> None:
    """Import the UnixFS DAG of CAR (v1, or v2) as a dataset per root; print each dataset ID (one per line)."""
    from dstore.ingest.add import ShardSpec
    from dstore.ingest.carimport import import_car, import_car_blocks

    spec = ShardSpec.parse(shards)
    with _store(home) as store, _peers(peer_urls, token) as peers:
        if blocks:
            held = import_car_blocks(car, store, spec, peers=peers)
            click.echo(json.dumps(held.to_json()) if as_json else held.dataset.encode("base32"))
            return
        results = import_car(car, store, spec, peers=peers)
    for result in results:
        click.echo(json.dumps(result.to_json()) if as_json else result.dataset.encode("base32"))


@main.command()
@click.argument("cid", metavar="CID[/PATH]")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write it.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@home_option
@peers_options
@gateways_option
def get(
    cid: str, output: Path, quiet: bool, as_json: bool, home: str | None, peer_urls: str | None, token: str | None
) -> None:
    """Write dataset CID, or its file or folder PATH, to OUTPUT; an interrupted get resumes when run again."""
    from dstore.fetch.get import get as do_get

    with (
        _sigterm_interrupts(),
        _store(home) as store,
        _peers(peer_urls, token) as peers,
        _gateways() as gateways,
        _progress("getting", quiet) as (start, advance),
    ):
        summary = do_get(store, cid, output, progress=advance, on_start=start, peers=peers, gateways=gateways)
    if as_json:
        click.echo(json.dumps(summary))


@main.command(name="ls")
@click.argument("target", metavar="CID[/PATH]")
@click.option("-l", "long", is_flag=True, help="Show sizes and CIDs.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry.")
@home_option
@peers_options
@gateways_option
def ls_(target: str, long: bool, as_json: bool, home: str | None, peer_urls: str | None, token: str | None) -> None:
    """List a folder of a dataset."""
    from dstore.fetch.reader import DatasetReader

    cid, _, path = target.partition("/")
    tty = sys.stdout.isatty()
    with (
        _store(home) as store,
        _peers(peer_urls, token) as peers,
        _gateways() as gateways,
        DatasetReader(store, cid, peers=peers, gateways=gateways) as reader,
    ):
        for entry in reader.ls(path):
            if as_json:
                click.echo(
                    json.dumps({"name": entry.name, "type": entry.kind, "size": entry.size, "cid": entry.cid_text})
                )
                continue
            name = _printable(entry.name) if tty else entry.name  # piped: the names as they are
            if long:
                kind, size = ("d", "-") if entry.kind == "dir" else ("-", entry.size)
                click.echo(f"{kind} {size:>14} {entry.cid_text} {name}")
            else:
                click.echo(name + ("/" if entry.kind == "dir" else ""))


@main.command()
@click.argument("target", metavar="CID/PATH")
@home_option
@peers_options
@gateways_option
def cat(target: str, home: str | None, peer_urls: str | None, token: str | None) -> None:
    """Write one file of a dataset to stdout."""
    from dstore.fetch.reader import DatasetReader

    cid, _, path = target.partition("/")
    out = sys.stdout.buffer
    with (
        _sigterm_interrupts(),
        _store(home) as store,
        _peers(peer_urls, token) as peers,
        _gateways() as gateways,
        DatasetReader(store, cid, peers=peers, gateways=gateways) as reader,
    ):
        for piece in reader.iter_file(path):
            _write_stdout(out.write, piece)
        _write_stdout(lambda _: out.flush(), b"")


def _write_stdout(write: Callable[[Any], object], data: Any) -> None:
    """An error writing stdout is about the output (exit 4); a closed pipe is not an error (141)."""
    from dstore.fetch.output import write_error

    try:
        write(data)
    except BrokenPipeError:
        raise
    except OSError as e:
        raise write_error("stdout", e) from e


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@home_option
def stat(as_json: bool, home: str | None) -> None:
    """Show what the store holds."""
    from dstore.fetch.reader import store_stat

    with _store(home) as store:
        info = store_stat(store)
    if as_json:
        click.echo(json.dumps(info))
        return
    for key, value in info.items():
        if key == "datasets_list":
            continue
        click.echo(f"{key + ':':<16} {value}")
    for ds in cast("list[str]", info.get("datasets_list", [])):
        click.echo(f"  {ds}")


@main.command()
@click.argument("cid")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="CAR file to write.")
@home_option
@peers_options
@gateways_option
def export(cid: str, output: Path, home: str | None, peer_urls: str | None, token: str | None) -> None:
    """Write the dataset's blocks as a CAR v1 file (readable by IPFS tools)."""
    from dstore.fetch.export import export_car

    with _sigterm_interrupts(), _store(home) as store, _peers(peer_urls, token) as peers, _gateways() as gateways:
        export_car(store, cid, output, peers=peers, gateways=gateways)


@main.command()
@click.argument("cid")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per pack.")
@home_option
@peers_options
@gateways_option
def verify(cid: str, as_json: bool, home: str | None, peer_urls: str | None, token: str | None) -> None:
    """Check every shard of dataset CID against its ID (on the peers, with --peers); exit 6 if any is missing or bad.

    A dataset read from gateways (--gateways) has no shards: every block of it is fetched and checked instead."""
    from dstore.errors import IntegrityError, NotEnoughShards
    from dstore.fetch.reader import DatasetReader
    from dstore.fetch.verify import verify_local, verify_peers

    with (
        _store(home) as store,
        _peers(peer_urls, token) as peers,
        _gateways() as gateways,
        DatasetReader(store, cid, peers=peers, gateways=gateways) as reader,
    ):
        if reader.gateway is not None:
            _verify_gateway(reader, as_json)
            return
        reports = verify_local(reader) if peers is None else verify_peers(reader, peers)
    _print_reports(reports, as_json)
    lost = [r for r in reports if r.good < r.needed]
    damaged = [r for r in reports if not r.healthy]
    if lost:
        raise NotEnoughShards(f"{len(lost)} of {len(reports)} packs have fewer than k good shards: data is lost")
    if damaged:
        raise IntegrityError(
            f"{len(damaged)} of {len(reports)} packs have missing or bad shards; run: dstore repair {cid}"
        )


@main.command()
@click.argument("cid")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@home_option
@peers_options
def repair(cid: str, as_json: bool, home: str | None, peer_urls: str | None, token: str | None) -> None:
    """Rebuild the missing or bad shards of dataset CID from its good ones (IDs never change)."""
    from dstore.fetch.reader import DatasetReader
    from dstore.fetch.verify import repair_local, repair_peers, verify_local, verify_peers

    with _store(home) as store, _peers(peer_urls, token) as peers, DatasetReader(store, cid, peers=peers) as reader:
        if peers is None:
            reports = verify_local(reader)
            written = repair_local(reader, reports)
        else:
            reports = verify_peers(reader, peers)
            written = repair_peers(reader, peers, reports)
    damaged = sum(not r.healthy for r in reports)
    if as_json:
        click.echo(json.dumps({"cid": cid, "packs": len(reports), "damaged_packs": damaged, "shards_written": written}))
    else:
        click.echo(f"{len(reports)} packs checked, {damaged} damaged, {written} shards rewritten")


def _verify_gateway(reader: Any, as_json: bool) -> None:
    from dstore.fetch.gateway import verify_gateway

    blocks, nbytes = verify_gateway(reader)  # raises on the first block no gateway gives verified
    if as_json:
        click.echo(json.dumps({"cid": reader.cid.encode("base32"), "blocks": blocks, "bytes": nbytes}))
    else:
        click.echo(f"{blocks} blocks ({nbytes} bytes) fetched from the gateways, every one verified")


def _print_reports(reports: list[Any], as_json: bool) -> None:
    if as_json:
        for r in reports:
            click.echo(json.dumps(r.to_json()))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("good / needed", "total", "bad shards", "pack")
    for r in reports:
        bad = ", ".join(f"{s.index} ({s.problem}, {s.where})" for s in r.shards if not s.ok) or "-"
        table.add_row(f"{r.good} / {r.needed}", str(len(r.shards)), bad, r.to_json()["pack"])
    Console(soft_wrap=True).print(table)


# -- lifetime: rm, gc, fsck (docs/lifetime.md) -------------------------------------


@main.command()
@click.argument("cid")
@home_option
@peers_options
def rm(cid: str, home: str | None, peer_urls: str | None, token: str | None) -> None:
    """Forget dataset CID (its shards stay until `dstore gc`); with peers, also unpin it on every peer."""
    from dstore.errors import NotFound, PeerError
    from dstore.format.cid import cid_to_text, parse_cid
    from dstore.store.gc import remove_dataset

    dataset = parse_cid(cid)
    text = cid_to_text(dataset)
    with _peers(peer_urls, token) as peers:  # connected first: a bad --token-file changes nothing
        with _store(home) as store:
            try:
                remove_dataset(store, dataset)
                forgotten = True
            except NotFound:
                if peers is None:
                    raise
                forgotten = False  # perhaps added elsewhere, or a second run after a peer failed
        if peers is None:
            click.echo(text)
            return
        report = peers.unpin(dataset)
    if not forgotten and not report.done and not report.failed:
        raise NotFound(f"dataset {text} is not in this store and no peer has it pinned")
    click.echo(text)
    asked = len(report.done) + len(report.absent) + len(report.failed)
    click.echo(f"unpinned on {len(report.done)} of {asked} peers ({len(report.absent)} had no pin)")
    if report.failed:
        raise PeerError(
            f"{len(report.failed)} of {asked} peers did not unpin {text} ({report.failures()}); they keep its shards: "
            f"run `dstore rm {text}` with the peers again"
        )


def _clean_stale_gets(home: Path) -> int:
    """Remove leftovers of interrupted gets (dstore.fetch.partial, where present); returns how many."""
    import importlib

    try:
        partial = importlib.import_module("dstore.fetch.partial")
    except ImportError:
        return 0
    clean = getattr(partial, "clean_stale_gets", None)
    return len(clean(home)) if clean is not None else 0


@main.command()
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@home_option
def gc(dry_run: bool, as_json: bool, home: str | None) -> None:
    """Delete shards and index entries no remaining dataset needs, and leftovers of interrupted commands."""
    from dstore.store.gc import collect_garbage

    with _store(home) as store:
        report = collect_garbage(store, dry_run=dry_run)
        if not dry_run:
            report.tmp_files_removed += _clean_stale_gets(store.home)
    if as_json:
        click.echo(json.dumps(report.to_json()))
        return
    verb = "would free" if dry_run else "freed"
    click.echo(
        f"{verb} {report.bytes_freed} bytes: {report.shard_files_removed} shard files of {report.packs_removed} "
        f"packs, {report.orphan_files_removed} orphan files, {report.tmp_files_removed} temporary files, "
        f"{report.blocks_removed} blocks; {report.datasets_kept} datasets kept"
    )


@main.command()
@click.option("--rebuild", is_flag=True, help="Rebuild the index from the shard and pointer files.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@home_option
def fsck(rebuild: bool, as_json: bool, home: str | None) -> None:
    """Check the store index against the shard files (exit 8 on problems), or rebuild it from them."""
    from dstore.errors import IntegrityError, StoreError
    from dstore.store import default_home
    from dstore.store import fsck as fsck_

    root = Path(home) if home else default_home()
    if rebuild:
        rebuilt = fsck_.rebuild(root)
        if as_json:
            click.echo(json.dumps(rebuilt.to_json()))
        else:
            written = rebuilt.metadata_packs_written
            click.echo(f"index rebuilt: {rebuilt.datasets} datasets, {written} metadata packs written")
            for line in rebuilt.lost:
                click.echo(f"lost: {line}")
        if rebuilt.lost:
            raise IntegrityError(f"{len(rebuilt.lost)} datasets could not be recovered from this store")
        return
    report = fsck_.check(root)
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        for line in report.problems:
            click.echo(line)
        click.echo(f"{report.datasets} datasets, {len(report.problems)} problems")
    if report.problems:
        raise StoreError(f"{len(report.problems)} problems in the store; run `dstore fsck --rebuild`")


@main.command()
@click.argument("cid")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@home_option
@peers_options
@gateways_option
def mount(cid: str, mountpoint: Path, home: str | None, peer_urls: str | None, token: str | None) -> None:
    """Mount dataset CID read-only at MOUNTPOINT (FUSE) until Ctrl-C or SIGTERM, then unmount."""
    from dstore.errors import UsageError

    if not mountpoint.is_dir():
        raise UsageError(f"mountpoint {mountpoint} does not exist or is not a folder")
    if any(mountpoint.iterdir()):
        raise UsageError(f"mountpoint {mountpoint} is not empty")
    try:
        from dstore.mount import fuse
    except (ImportError, OSError) as e:  # mfusepy missing, or no libfuse on this machine
        raise DstoreError(f"FUSE is not available: {e} (pip install 'dstore[fuse]'; apt-get install fuse3)") from e
    import dstore

    def mounted() -> None:
        click.echo(f"mounted {dataset.cid} at {mountpoint} (Ctrl-C to unmount)")
        sys.stdout.flush()

    gateways = click.get_current_context().meta.get("dstore.gateways")
    with dstore.open(cid, peers=peer_urls, token=token, home=home, gateways=gateways) as dataset:
        try:
            fuse.mount(dataset, str(mountpoint), on_mounted=mounted)
        except RuntimeError as e:
            raise DstoreError(f"cannot mount at {mountpoint}: {e}") from e
