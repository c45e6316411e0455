"""API keys: format, hashing, authentication, scopes, revocation; one contract for every store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from analytics.adapters.memory import InMemoryApiKeyStore
from analytics.adapters.sqlite_keys import SQLiteApiKeyStore
from analytics.application.api_keys import (
    authenticate,
    authorize,
    create_key,
    ensure_dev_key,
    revoke_key,
)
from analytics.domain.auth import SCOPES, generate_key, parse_key, parse_scopes, verify
from analytics.domain.errors import Forbidden, NotFound, Unauthenticated

pytestmark = pytest.mark.unit


class FixedClock:
    def __init__(self) -> None:
        self.t = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.t


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    if request.param == "memory":
        return InMemoryApiKeyStore()
    return SQLiteApiKeyStore(tmp_path / "keys.sqlite3")


def test_key_format_and_hash_never_contains_the_secret() -> None:
    new = generate_key("ci", ("ingest",), now=FixedClock().now())
    key_id, secret = parse_key(new.secret)  # type: ignore[misc]
    assert key_id == new.key.key_id
    assert secret not in new.key.secret_hash and secret not in new.key.salt
    assert verify(new.key, secret)
    assert not verify(new.key, secret[:-1] + ("A" if secret[-1] != "A" else "B"))


def test_two_keys_with_the_same_secret_hash_differently() -> None:
    a = generate_key("a", SCOPES, now=FixedClock().now()).key
    b = generate_key("b", SCOPES, now=FixedClock().now()).key
    assert a.salt != b.salt and a.secret_hash != b.secret_hash


@pytest.mark.parametrize("bad", ["", "ak_", "Bearer x", "ak_zzzzzzzzzzzz_" + "a" * 43, "x" * 200,
                                 "ak_0123456789ab_" + "a" * 43 + "\n"])  # "$" allowed that (QA)
def test_malformed_keys_do_not_parse(bad: str) -> None:
    assert parse_key(bad) is None


def test_parse_scopes() -> None:
    assert parse_scopes("read, ingest") == ("ingest", "read")
    with pytest.raises(ValueError, match="unknown scope"):
        parse_scopes("ingest,root")
    with pytest.raises(ValueError):
        parse_scopes(" , ")


def test_store_contract(store) -> None:  # type: ignore[no-untyped-def]
    clock = FixedClock()
    new = create_key("ci", ("ingest", "read"), store=store, clock=clock, rate_per_minute=600)
    got = store.get(new.key.key_id)
    assert got == new.key and got.rate_per_minute == 600
    assert [k.key_id for k in store.list()] == [new.key.key_id]
    assert store.revoke(new.key.key_id, clock.now()) is True
    assert store.revoke(new.key.key_id, clock.now()) is False  # already revoked
    assert store.revoke("000000000000", clock.now()) is False
    assert store.get(new.key.key_id).revoked_at == clock.now()
    assert len(store.list()) == 1  # revoked keys stay listed


def test_authenticate_and_authorize(store) -> None:  # type: ignore[no-untyped-def]
    clock = FixedClock()
    new = create_key("ci", ("ingest",), store=store, clock=clock)
    assert authenticate(new.secret, store=store).key_id == new.key.key_id
    authorize(new.key, "ingest")
    with pytest.raises(Forbidden):
        authorize(new.key, "read")
    for bad in (None, "", "nonsense", new.secret[:-2] + "xx", "ak_000000000000_" + "a" * 43):
        with pytest.raises(Unauthenticated):
            authenticate(bad, store=store)
    revoke_key(new.key.key_id, store=store, clock=clock)
    with pytest.raises(Unauthenticated):
        authenticate(new.secret, store=store)
    with pytest.raises(NotFound):
        revoke_key(new.key.key_id, store=store, clock=clock)



def test_an_unknown_key_id_still_costs_one_hash_verification(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mutation QA: a well-formed key whose id is unknown is verified against a dummy
    record, so a caller cannot tell known key ids from unknown ones by how fast the 401
    comes (key-id enumeration). Checked structurally (verify is called, once, on a
    record that is not a stored key), not by timing."""
    import analytics.application.api_keys as api_keys  # noqa: PLC0415

    store = InMemoryApiKeyStore()
    known = create_key("ci", ("ingest",), store=store, clock=FixedClock())
    calls: list[str] = []

    def spy(record, secret: str) -> bool:  # type: ignore[no-untyped-def]
        calls.append(record.key_id)
        return verify(record, secret)

    monkeypatch.setattr(api_keys, "verify", spy)
    _, secret = parse_key(known.secret)  # type: ignore[misc]
    unknown_id = "0" * len(known.key.key_id)
    unknown = f"ak_{unknown_id}_{secret}"  # the right secret, an id no store has
    assert parse_key(unknown) == (unknown_id, secret)
    with pytest.raises(Unauthenticated):
        authenticate(unknown, store=store)
    assert len(calls) == 1 and calls[0] not in (unknown_id, known.key.key_id)
    assert authenticate(known.secret, store=store).key_id == known.key.key_id
    assert calls[1:] == [known.key.key_id]  # the same one verification for a known id

def test_dev_key_only_on_first_start(store) -> None:  # type: ignore[no-untyped-def]
    clock = FixedClock()
    first = ensure_dev_key(store=store, clock=clock)
    assert first is not None and first.key.scopes == SCOPES
    assert ensure_dev_key(store=store, clock=clock) is None
    revoke_key(first.key.key_id, store=store, clock=clock)
    assert ensure_dev_key(store=store, clock=clock) is None  # a revoked dev key stays revoked


def test_sqlite_store_is_private_and_persistent(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite3"
    new = create_key("ci", ("read",), store=SQLiteApiKeyStore(path), clock=FixedClock())
    assert path.stat().st_mode & 0o077 == 0
    assert SQLiteApiKeyStore(path).get(new.key.key_id) == new.key
    assert new.secret.encode() not in path.read_bytes()


def test_serve_first_start_key(tmp_path: Path) -> None:
    from analytics.entrypoints.serve import first_start_key
    from analytics.settings import Settings

    settings = Settings(data_dir=tmp_path)
    key = first_start_key(settings)
    assert key is not None and parse_key(key)
    assert first_start_key(settings) is None  # persisted: not re-created
    assert first_start_key(settings.model_copy(update={"auth": "disabled"})) is None


def test_serve_names_its_data_directory_in_the_key_commands_it_shows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a later start serve shows how to make a key; run as shown, the key lands in the
    store that serve reads (without ``--data-dir`` it went to ``./data``: 401)."""
    import re
    import shlex

    from analytics.entrypoints.cli import main
    from analytics.entrypoints.serve import banner
    from analytics.settings import Settings

    data_dir = tmp_path / "my data"  # a space: the command must still be one to paste
    settings = Settings(data_dir=data_dir)
    first = banner(settings, dev_key="ak_example_secret")
    assert "shown only this once" in first and f"--data-dir {shlex.quote(str(data_dir))}" in first
    assert "\n  export ANALYTICS_KEY=ak_example_secret\n" in first  # as README "First event"
    text = banner(settings, dev_key=None)
    (command,) = re.findall(r"<your key: (analytics keys create .*)>", text)
    assert main(shlex.split(command)[1:]) == 0
    (secret,) = re.findall(r"ak_\w+_[\w-]+", capsys.readouterr().out)
    store = SQLiteApiKeyStore(data_dir / "keys.sqlite3")
    assert store.get(parse_key(secret)[0]) is not None


def test_keys_from_configuration(tmp_path: Path) -> None:
    from analytics.bootstrap import build_key_store
    from analytics.settings import Settings, SettingsError

    ci = generate_key("x", SCOPES, now=FixedClock().now()).secret
    ops = generate_key("x", SCOPES, now=FixedClock().now()).secret
    settings = Settings.from_env({"ANALYTICS_DATA_DIR": str(tmp_path),
                                  "ANALYTICS_API_KEYS": f"ci:ingest:{ci}, ops:read+admin:{ops}"})  # fmt: skip
    assert ci not in repr(settings)
    store = build_key_store(settings)
    assert authenticate(ci, store=store).scopes == ("ingest",)
    assert authenticate(ops, store=store).scopes == ("read", "admin")
    stored = create_key("db", ("read",), store=store, clock=FixedClock())
    assert authenticate(stored.secret, store=store).name == "db"
    assert {k.name for k in store.list()} == {"ci", "ops", "db"}
    twin = f"ak_{parse_key(ci)[0]}_{'B' * 43}"  # the same id, another secret
    for bad in ("ci:ingest", f"ci:root:{ci}", "ci:ingest:ak_123", f":ingest:{ci}",
                f"ci:ingest:{ci},ci2:read:{twin}"):  # fmt: skip
        with pytest.raises(SettingsError, match="ANALYTICS_API_KEYS") as err:
            Settings.from_env({"ANALYTICS_API_KEYS": bad})
        assert ci not in str(err.value)  # a secret is never echoed
