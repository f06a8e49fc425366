"""``python -m dstore.peer serve …``: the peer without the main CLI."""

from dstore.peer.cli import peer

peer(prog_name="dstore peer")
