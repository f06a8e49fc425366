"""`--token-file PATH` / `$DSTORE_TOKEN_FILE`: the write token without putting it in `ps`, against real peers."""

from __future__ import annotations

import pytest
from peerutil import running_peers

from treeutil import random_bytes, snapshot

TOKEN = "file-token-123"


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    with running_peers(tmp_path_factory.mktemp("peers"), 3, token=TOKEN) as peers:
        yield peers


def one_line_error(result, code: int) -> str:
    assert result.code == code, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dstore: error: "), result.err
    return lines[0]


def source(tmp_path, seed: int):
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.bin").write_bytes(random_bytes(1_500_000, seed))
    return src


def no_token_env(env: dict[str, str]) -> dict[str, str]:
    # The peers' token must come from the file only; the fixture environment may carry one.
    return {"DSTORE_TOKEN": "", "DSTORE_TOKEN_FILE": "", **env}


def test_add_with_token_file_then_get_from_peers(dstore, tmp_path, three):
    src = source(tmp_path, 1)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    peers = ",".join(p.url for p in three)
    env = no_token_env({})
    cid = dstore("add", src, "-q", "--shards", "2+1", "--peers", peers, "--token-file", token_file, env=env)
    cid = cid.out.strip()
    fresh = {**env, "DSTORE_HOME": str(tmp_path / "fresh")}
    dstore("get", cid, "-o", tmp_path / "out", "--peers", peers, env=fresh)
    assert snapshot(tmp_path / "out") == snapshot(src)


def test_token_file_from_the_environment(dstore, tmp_path, three):
    src = source(tmp_path, 2)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    env = no_token_env({"DSTORE_PEERS": ",".join(p.url for p in three), "DSTORE_TOKEN_FILE": str(token_file)})
    dstore("add", src, "-q", "--shards", "2+1", env=env)


def test_wrong_token_in_file_is_refused_by_peers(dstore, tmp_path, three):
    token_file = tmp_path / "token"
    token_file.write_text("not-the-token\n")
    env = no_token_env({"DSTORE_PEERS": ",".join(p.url for p in three)})
    result = dstore("add", source(tmp_path, 3), "--shards", "2+1", "--token-file", token_file, check=False, env=env)
    one_line_error(result, 9)


@pytest.mark.parametrize("content", [None, "", "  \n", "two\nlines\n"], ids=["missing", "empty", "blank", "two-lines"])
@pytest.mark.parametrize("how", ["option", "env"])
def test_bad_token_file_is_a_one_line_usage_error(dstore, tmp_path, three, content, how):
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    env = no_token_env({"DSTORE_PEERS": three[0].url})
    args = ["add", source(tmp_path, 4), "--shards", "1+0"]
    if how == "option":
        args += ["--token-file", token_file]
    else:
        env["DSTORE_TOKEN_FILE"] = str(token_file)
    line = one_line_error(dstore(*args, check=False, env=env), 2)
    assert str(token_file) in line


def test_token_and_token_file_together_is_a_usage_error(dstore, tmp_path, three):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    env = no_token_env({"DSTORE_PEERS": three[0].url})
    args = ["add", source(tmp_path, 5), "--token", TOKEN, "--token-file", token_file]
    assert "not both" in one_line_error(dstore(*args, check=False, env=env), 2)
