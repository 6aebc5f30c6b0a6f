"""PLC's schema under Alembic: a database made by the first revision upgrades in place to
the head, keeping its rows, and the head is exactly ``schema.metadata``."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, inspect, select

from slicectl.plc import db as plcdb
from slicectl.plc import schema as s


def test_first_revision_upgrades_to_head(tmp_path: Path) -> None:
    engine = plcdb.make_engine(str(tmp_path / "old.sqlite"))
    plcdb.migrate(engine, "0001")
    assert plcdb.current_revision(engine) == "0001"
    assert "pcus" not in inspect(engine).get_table_names()
    with engine.begin() as conn:
        conn.execute(insert(s.sites).values(
            login_base="old", name="Old", abbreviated_name="O", is_public=True, enabled=True,
            max_slices=1, max_slivers=1, date_created=0, last_updated=0))
    engine.dispose()
    db = plcdb.Database(str(tmp_path / "old.sqlite"))
    assert plcdb.current_revision(db.engine) == plcdb.head_revision()
    assert set(s.metadata.tables) <= set(inspect(db.engine).get_table_names())
    with db.transaction(write=False) as conn:
        assert conn.execute(select(s.sites.c.login_base)).scalars().all() == ["old"]
    db.close()


def test_head_matches_metadata(tmp_path: Path) -> None:
    db = plcdb.Database(str(tmp_path / "new.sqlite"))
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), s.metadata)
    db.close()
    assert diff == []


def test_a_second_start_changes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "again.sqlite")
    plcdb.Database(path).close()
    db = plcdb.Database(path)
    assert plcdb.current_revision(db.engine) == plcdb.head_revision()
    db.close()
