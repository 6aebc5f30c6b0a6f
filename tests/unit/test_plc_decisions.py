"""PLC's pure decisions: filters to SQL, field checks, auth primitives (hmac vectors
computed with ``openssl dgst``), the login limiter, and the object rules as tables."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import and_
from sqlalchemy.dialects import postgresql, sqlite

from slicectl.plc import auth, filters, policy, sshkeys
from slicectl.plc.errors import InvalidArgument, PermissionDenied
from slicectl.plc.fields import Field
from slicectl.plc.objects import EVENT, PERSON, SITE, SLICE
from tests.plc_helpers import ED25519, World

# filters ------------------------------------------------------------------------------------


def where_sql(obj: Any, filt: object) -> str:
    q = filters.build(obj, filt)
    if not q.where:
        return ""
    return str(and_(*q.where).compile(dialect=sqlite.dialect(),
                                      compile_kwargs={"literal_binds": True}))


@pytest.mark.parametrize("filt,sql", [
    (None, ""),
    (7, "sites.site_id = 7"),
    ("pu", "sites.login_base IN ('pu')"),
    ([1, "pu"], "sites.site_id IN (1) OR sites.login_base IN ('pu')"),
    ({"name": "Prince*"}, "sites.name LIKE 'Prince%' ESCAPE '\\'"),
    ({"name": "a_b%"}, "sites.name LIKE 'a\\_b%' ESCAPE '\\'"),
    ({"~enabled": True}, "sites.enabled != 1"),
    ({">max_slices": 3, "[latitude": 1.5}, "sites.max_slices > 3 AND sites.latitude <= 1.5"),
    ({"]date_created": "2026-01-01 00:00:00"}, "sites.date_created >= 1767225600"),
    ({"site_id": [1, 2]}, "sites.site_id IN (1, 2)"),
    ({"site_id": []}, "0 = 1"),
    ({"url": None}, "sites.url IS NULL"),
    ({"-OR": True, "site_id": 1, "login_base": "x"}, "sites.site_id = 1 OR sites.login_base = 'x'"),
])
def test_filter_sql(filt: object, sql: str) -> None:
    assert where_sql(SITE, filt) == sql


def test_person_key_is_case_insensitive() -> None:
    assert where_sql(PERSON, "Alice@Example.ORG") == "persons.email_lc IN ('alice@example.org')"


def test_live_slices_only() -> None:
    q = filters.build(SLICE, None, now=100)
    assert str(q.where[0].compile(dialect=postgresql.dialect(),
                                  compile_kwargs={"literal_binds": True})) == "slices.expires > 100"


def test_sort_limit_offset() -> None:
    q = filters.build(SITE, {"-SORT": ["-name", "site_id"], "-LIMIT": 5, "-OFFSET": 10})
    assert [str(o) for o in q.order_by] == ["sites.name DESC", "sites.site_id ASC"]
    assert (q.limit, q.offset) == (5, 10)


@pytest.mark.parametrize("filt", [
    {"bogus": 1}, {"~bogus": 1}, {"-SORT": "bogus"}, {"-LIMIT": -1}, {"-LIMIT": "5"},
    {"max_slices": "three"}, {"<name": [1]}, {"name": {"a": 1}}, True, 1.5, [1.5],
    {"password": "x"},
])
def test_bad_filters_are_102(filt: object) -> None:
    obj = PERSON if filt == {"password": "x"} else SITE
    with pytest.raises(InvalidArgument):
        filters.build(obj, filt)


def test_return_fields() -> None:
    assert filters.return_fields(SITE, ["name", "site_id"]) == ["site_id", "name"]
    assert "password" not in filters.return_fields(PERSON, None)
    for bad in (["nope"], "name", [1], ["password"]):
        with pytest.raises(InvalidArgument):
            filters.return_fields(PERSON, bad)


def test_no_filter_on_computed_event_fields() -> None:
    with pytest.raises(InvalidArgument):
        filters.build(EVENT, {"object_ids": [1]})


@pytest.mark.parametrize("filt,expect", [
    (None, ["pu", "other"]), ("pu", ["pu"]), ({"login_base": ["pu", "zz"]}, ["pu"]),
    ({"name": "*th*"}, ["other"]), ({"-SORT": "-login_base"}, ["pu", "other"]),
    ({"-SORT": "login_base", "-LIMIT": 1}, ["other"]), ({"-LIMIT": 1, "-OFFSET": 1}, ["other"]),
    ({"~login_base": "pu"}, ["other"]), ([99], []), ({"name": "nothing*"}, []),
])
def test_filters_on_a_database(world: World, filt: object, expect: list[str]) -> None:
    assert [s["login_base"] for s in world.root.GetSites(filt, ["login_base"])] == expect


# fields ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,message", [
    (Field("int", None), "5", "Invalid x value: expected int, got string"),
    (Field("int", None), True, "Invalid x value: expected int, got boolean"),
    (Field("string", 3), "abcd", "Invalid x value: expected at most 3 bytes, got 4"),
    (Field("string", 3), "é✓", "Invalid x value: expected at most 3 bytes, got 5"),
    (Field("double", None), "1.0", "Invalid x value: expected double, got string"),
    (Field("boolean", None), 2, "Invalid x value: expected boolean, got int"),
    (Field("string", 9, nullable=False), None, "Invalid x value: expected string, got nil"),
    (Field("timestamp", None), "tomorrow", "Invalid x value: expected seconds or "
                                           "'YYYY-MM-DD HH:MM:SS', got 'tomorrow'"),
])
def test_field_checks(field: Field, value: object, message: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        field.check("x", value)
    assert e.value.message == "Invalid argument: " + message


def test_field_values_kept() -> None:
    assert Field("boolean", None).check("b", 1) is True
    assert Field("double", None).check("d", 3) == 3.0
    assert Field("timestamp", None).check("t", "1970-01-02 00:00:00") == 86400


# auth ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,args,message,digest", [
    ("abc", [1, {"b": "x", "a": ["z", 2]}], "[12xz]", "bcb6adaca8b30c8e3f77b5d4a0cc2a09a6c35714"),
    ("k3y", [], "[]", "32e39805fc44150d0d5efdc7cc8251bf92219e5b"),
    ("k3y", ["b", [None, {"k": [False, 1.5]}], "a"], "[1.5FalseNoneab]",
     "e26559115f07b16f0578ca48f9074d641e975965"),
])
def test_hmac_vectors(key: str, args: list[object], message: str, digest: str) -> None:
    assert auth.hmac_message(args) == message
    assert auth.hmac_value(key, args) == digest


def test_passwords() -> None:
    stored = auth.hash_password("s3cret", n=2**10)
    assert stored.startswith("scrypt$1024$8$1$")
    assert auth.verify_password("s3cret", stored)
    assert not auth.verify_password("s3cret ", stored)
    assert not auth.verify_password("s3cret", "garbage")
    assert not auth.verify_password("s3cret", None)
    assert auth.hash_password("s3cret", n=2**10) != stored


def test_verified_cache_misses_a_changed_hash() -> None:
    cache = auth.VerifiedCache()
    a, b = auth.hash_password("x", n=2**10), auth.hash_password("y", n=2**10)
    assert cache.verify("x", a) and cache.verify("x", a)
    assert not cache.verify("x", b)


def test_sessions_and_node_keys() -> None:
    key, h = auth.new_session()
    assert len(key) == 43 and h == auth.session_hash(key) and key not in h
    nk = auth.new_node_key()
    assert len(nk) == 43 and not nk.endswith("=")


def test_login_limiter() -> None:
    now = [0.0]
    lim = auth.LoginLimiter(per_account=3, per_source=5, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        lim.failed("a", "s1")
    assert lim.blocked("a", "s2") and not lim.blocked("b", "s1")
    now[0] = 61
    assert not lim.blocked("a", "s2")
    for i in range(5):
        lim.failed(f"u{i}", "s9")
    assert lim.blocked("zz", "s9") and not lim.blocked("zz", "s1")


# ssh keys ----------------------------------------------------------------------------------------

def test_key_canonical_form() -> None:
    assert sshkeys.check(ED25519) == "ssh-ed25519"
    assert sshkeys.canonical(ED25519 + "  ") == " ".join(ED25519.split()[:2])


# the object rules --------------------------------------------------------------------------------

SITE_A, SITE_B = 1, 2
CALLERS = {
    "admin": policy.Caller("person", frozenset({"admin"}), person_id=1, site_ids=()),
    "pi": policy.Caller("person", frozenset({"pi"}), person_id=2, site_ids=(SITE_A,)),
    "other_pi": policy.Caller("person", frozenset({"pi"}), person_id=3, site_ids=(SITE_B,)),
    "user": policy.Caller("person", frozenset({"user"}), person_id=4, site_ids=(SITE_A,)),
    "member": policy.Caller("person", frozenset({"user"}), person_id=5, site_ids=(SITE_B,)),
    "tech": policy.Caller("person", frozenset({"tech"}), person_id=6, site_ids=(SITE_A,)),
}
MEMBERS = (5,)


def allowed(check: Any) -> bool:
    try:
        check()
    except PermissionDenied:
        return False
    return True


#: caller -> (AddSlice at A, write slice of A, members of slice of A, node of A, UpdateSite A)
MATRIX = {
    "admin":    (True, True, True, True, True),
    "pi":       (True, True, True, True, True),
    "other_pi": (False, False, False, False, False),
    "user":     (False, False, False, False, False),
    "member":   (False, True, False, False, False),
    "tech":     (False, False, False, True, False),
}


@pytest.mark.parametrize("who", sorted(MATRIX))
def test_permission_matrix(who: str) -> None:
    c = CALLERS[who]
    got = (allowed(lambda: policy.check_add_slice(c, SITE_A)),
           allowed(lambda: policy.check_write_slice(c, SITE_A, MEMBERS)),
           allowed(lambda: policy.check_slice_members(c, SITE_A)),
           allowed(lambda: policy.check_write_node(c, SITE_A)),
           allowed(lambda: policy.check_update_site(c, SITE_A, ["name"])))
    assert got == MATRIX[who]


@pytest.mark.parametrize("who,role,ok", [
    ("admin", 10, True), ("admin", 20, True), ("pi", 30, True), ("pi", 40, True),
    ("pi", 20, False), ("pi", 10, False), ("other_pi", 30, False), ("user", 30, False),
])
def test_grant_role(who: str, role: int, ok: bool) -> None:
    assert allowed(lambda: policy.check_grant_role(CALLERS[who], role, [SITE_A])) == ok


@pytest.mark.parametrize("who,tag_roles,writable,ok", [
    ("admin", ["admin"], False, True), ("pi", ["admin"], True, False),
    ("pi", ["admin", "pi", "user"], True, True), ("member", ["admin", "pi", "user"], True, True),
    ("member", ["admin", "pi", "user"], False, False), ("tech", ["admin", "pi", "user"], True, False),
])
def test_tag_rules(who: str, tag_roles: list[str], writable: bool, ok: bool) -> None:
    assert allowed(lambda: policy.check_write_tag(CALLERS[who], tag_roles, writable)) == ok


NOW = 1_000_000
WEEK = 7 * 86400


@pytest.mark.parametrize("who,expires,url,desc,ok", [
    ("pi", NOW + 8 * WEEK, "u", "d", True), ("pi", NOW + 8 * WEEK + 1, "u", "d", False),
    ("pi", NOW + WEEK, "", "d", False), ("pi", NOW + WEEK, "u", "  ", False),
    ("admin", NOW + 52 * WEEK, None, None, True), ("admin", NOW, "u", "d", False),
    ("member", NOW - 1, "u", "d", False),
])
def test_renewal_rules(who: str, expires: int, url: str | None, desc: str | None, ok: bool) -> None:
    try:
        policy.check_renewal(CALLERS[who], NOW, expires, url, desc)
        assert ok
    except InvalidArgument:
        assert not ok
