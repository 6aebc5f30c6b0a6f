"""Sites, persons, their roles and site memberships, and their ssh keys."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import delete, or_, select, update

from .. import crud, sshkeys
from .. import schema as s
from ..auth import hash_password
from ..call import Call
from ..errors import InvalidArgument
from ..methods import TABLE, Fields, Ref, arg
from ..objects import KEY, KEY_TYPES, PERSON, ROLES, SITE
from ..policy import (
    ADMIN,
    EVERYONE,
    NODE,
    PERSONS,
    PI,
    check_enable_person,
    check_grant_role,
    check_manage_person,
    check_update_site,
)
from .common import RoleArg, key_free, link, lookup, register_delete, register_get

# sites ----------------------------------------------------------------------------------------

register_get(SITE, EVERYONE)


@TABLE.method("AddSite", ADMIN, arg("site_fields", Fields(SITE, "add")), returns="int",
              writes=True)
def add_site(call: Call, fields: dict[str, Any]) -> int:
    """Add a site; returns its site_id. login_base is the prefix of its slices' names."""
    key_free(call, SITE, fields)
    values = {**SITE.defaults, "latitude": None, "longitude": None, "url": None, **fields,
              "date_created": call.now, "last_updated": call.now}
    site_id = crud.insert_row(call.conn, SITE, values)
    call.event("Site", [site_id], fields)
    return site_id


@TABLE.method("UpdateSite", PI, arg("site_id_or_login_base", Ref(SITE)),
              arg("site_fields", Fields(SITE, "update")), returns="int", writes=True)
def update_site(call: Call, ref: object, fields: dict[str, Any]) -> int:
    """Update a site. A PI may update their own site but not max_slices, max_slivers,
    login_base or enabled."""
    site = crud.resolve(call.conn, SITE, ref)
    check_update_site(call.caller, site["site_id"], fields)
    key_free(call, SITE, fields, site["site_id"])
    crud.update_row(call.conn, SITE, site["site_id"], {**fields, "last_updated": call.now})
    call.event("Site", [site["site_id"]], fields)
    return 1


register_delete(SITE, ADMIN, doc="Delete a site with its slices, nodes, addresses and PCUs; "
                                 "its persons stay.")


# persons --------------------------------------------------------------------------------------

def _visible_persons(call: Call) -> Any:
    c = call.caller
    if c.is_admin or c.kind == "node":
        return None
    same_site = select(s.person_site.c.person_id).where(s.person_site.c.site_id.in_(c.site_ids))
    return or_(s.persons.c.person_id.in_(same_site), s.persons.c.person_id == c.person_id)


register_get(PERSON, PERSONS | NODE, restrict=_visible_persons,
             doc="Return the persons matching the filter. Non-admins see the persons of their "
                 "sites and themselves. Passwords are never returned.")


def _person_values(call: Call, fields: dict[str, Any]) -> dict[str, Any]:
    values = {k: v for k, v in fields.items() if k != "password"}
    if "email" in fields:
        values["email_lc"] = fields["email"].lower()
    if "password" in fields:
        pw = fields["password"]
        values["password_hash"] = hash_password(pw, call.settings.scrypt_n) if pw else None
    return values


def person_sites_roles(call: Call, person_id: int) -> tuple[list[int], list[int]]:
    sites = call.conn.execute(select(s.person_site.c.site_id).where(
        s.person_site.c.person_id == person_id)).scalars().all()
    roles = call.conn.execute(select(s.person_role.c.role_id).where(
        s.person_role.c.person_id == person_id)).scalars().all()
    return list(sites), list(roles)


@TABLE.method("AddPerson", PI, arg("person_fields", Fields(PERSON, "add")), returns="int",
              writes=True)
def add_person(call: Call, fields: dict[str, Any]) -> int:
    """Add a person (disabled until an admin or PI enables them); returns its person_id."""
    key_free(call, PERSON, fields)
    values = {"title": None, "phone": None, "url": None, "bio": None, "password_hash": None,
              **_person_values(call, fields), "enabled": False,
              "date_created": call.now, "last_updated": call.now}
    pid = crud.insert_row(call.conn, PERSON, values)
    call.event("Person", [pid], fields)
    return pid


@TABLE.method("UpdatePerson", PERSONS, arg("person_id_or_email", Ref(PERSON)),
              arg("person_fields", Fields(PERSON, "update")), returns="int", writes=True)
def update_person(call: Call, ref: object, fields: dict[str, Any]) -> int:
    """Update a person: admins any, PIs persons of their sites, anyone themself;
    ``enabled`` only by admins and PIs of the person's site."""
    person = crud.resolve(call.conn, PERSON, ref)
    pid = person["person_id"]
    sites, roles = person_sites_roles(call, pid)
    check_manage_person(call.caller, pid, sites, roles)
    if "enabled" in fields:
        check_enable_person(call.caller, sites)
    key_free(call, PERSON, fields, pid)
    crud.update_row(call.conn, PERSON, pid, {**_person_values(call, fields),
                                            "last_updated": call.now})
    call.event("Person", [pid], fields)
    return 1


@TABLE.method("DeletePerson", PI, arg("person_id_or_email", Ref(PERSON)), returns="int",
              writes=True)
def delete_person(call: Call, ref: object) -> int:
    """Delete a person with their keys, roles and memberships."""
    person = crud.resolve(call.conn, PERSON, ref)
    sites, roles = person_sites_roles(call, person["person_id"])
    check_manage_person(call.caller, person["person_id"], sites, roles, self_ok=False)
    crud.delete_row(call.conn, PERSON, person["person_id"])
    call.event("Person", [person["person_id"]])
    return 1


def _role_change(call: Call, role: int, ref: object, present: bool) -> int:
    person = crud.resolve(call.conn, PERSON, ref)
    sites, _ = person_sites_roles(call, person["person_id"])
    check_grant_role(call.caller, role, sites)
    if link(call, s.person_role, present, person_id=person["person_id"], role_id=role):
        call.event("Person", [person["person_id"]], {"role_id": role})
    return 1


@TABLE.method("AddRoleToPerson", PI, arg("role_id_or_name", RoleArg()),
              arg("person_id_or_email", Ref(PERSON)), returns="int", writes=True)
def add_role_to_person(call: Call, role: int, ref: object) -> int:
    """Grant a role. A PI grants only weaker roles (user, tech) to persons of their sites."""
    return _role_change(call, role, ref, True)


@TABLE.method("DeleteRoleFromPerson", PI, arg("role_id_or_name", RoleArg()),
              arg("person_id_or_email", Ref(PERSON)), returns="int", writes=True)
def delete_role_from_person(call: Call, role: int, ref: object) -> int:
    """Revoke a role (same rules as AddRoleToPerson)."""
    return _role_change(call, role, ref, False)


def _set_primary(call: Call, person_id: int, site_id: int | None) -> None:
    call.conn.execute(update(s.person_site).where(s.person_site.c.person_id == person_id)
                      .values(is_primary=s.person_site.c.site_id == site_id
                              if site_id is not None else False))


def _ensure_primary(call: Call, person_id: int) -> None:
    rows = call.conn.execute(select(s.person_site.c.site_id, s.person_site.c.is_primary).where(
        s.person_site.c.person_id == person_id).order_by(s.person_site.c.site_id)).all()
    if rows and not any(p for _, p in rows):
        call.conn.execute(update(s.person_site).where(
            s.person_site.c.person_id == person_id, s.person_site.c.site_id == rows[0][0])
            .values(is_primary=True))


@TABLE.method("AddPersonToSite", ADMIN, arg("person_id_or_email", Ref(PERSON)),
              arg("site_id_or_login_base", Ref(SITE)), returns="int", writes=True)
def add_person_to_site(call: Call, pref: object, sref: object) -> int:
    """Make a person a member of a site (their first site becomes the primary one)."""
    person = crud.resolve(call.conn, PERSON, pref)
    site = crud.resolve(call.conn, SITE, sref)
    pid, sid = person["person_id"], site["site_id"]
    exists = call.conn.execute(select(s.person_site.c.site_id).where(
        s.person_site.c.person_id == pid, s.person_site.c.site_id == sid)).first()
    if exists is None:
        call.conn.execute(s.person_site.insert().values(person_id=pid, site_id=sid,
                                                        is_primary=False))
        _ensure_primary(call, pid)
        call.event("Person", [pid], {"site_id": sid})
    return 1


@TABLE.method("DeletePersonFromSite", ADMIN, arg("person_id_or_email", Ref(PERSON)),
              arg("site_id_or_login_base", Ref(SITE)), returns="int", writes=True)
def delete_person_from_site(call: Call, pref: object, sref: object) -> int:
    """Remove a person from a site."""
    person = crud.resolve(call.conn, PERSON, pref)
    site = crud.resolve(call.conn, SITE, sref)
    if link(call, s.person_site, False, person_id=person["person_id"], site_id=site["site_id"]):
        _ensure_primary(call, person["person_id"])
        call.event("Person", [person["person_id"]], {"site_id": site["site_id"]})
    return 1


@TABLE.method("SetPersonPrimarySite", PERSONS, arg("person_id_or_email", Ref(PERSON)),
              arg("site_id_or_login_base", Ref(SITE)), returns="int", writes=True)
def set_person_primary_site(call: Call, pref: object, sref: object) -> int:
    """Choose which of a person's sites comes first in site_ids."""
    person = crud.resolve(call.conn, PERSON, pref)
    site = crud.resolve(call.conn, SITE, sref)
    pid = person["person_id"]
    sites, roles = person_sites_roles(call, pid)
    check_manage_person(call.caller, pid, sites, roles)
    if site["site_id"] not in sites:
        raise InvalidArgument(f"Invalid site value: expected one of the person's sites, got "
                              f"{sref!r}")
    _set_primary(call, pid, site["site_id"])
    call.event("Person", [pid], {"primary_site_id": site["site_id"]})
    return 1


# keys -----------------------------------------------------------------------------------------

register_get(KEY, PERSONS | NODE)
lookup("GetKeyTypes", EVERYONE, lambda: list(KEY_TYPES), "The key types: ssh.")


def key_hash(key: str) -> str:
    return hashlib.sha256(sshkeys.canonical(key).encode()).hexdigest()


def _check_key(call: Call, fields: dict[str, Any]) -> None:
    if "key" in fields:
        sshkeys.check(fields["key"])
        banned = call.conn.execute(select(s.key_blacklist.c.key_hash).where(
            s.key_blacklist.c.key_hash == key_hash(fields["key"]))).first()
        if banned is not None:
            raise InvalidArgument("Invalid key value: expected a key that is not blacklisted, "
                                  "got a blacklisted key")


def _key_owner(call: Call, key_id: object) -> dict[str, Any]:
    key = crud.resolve(call.conn, KEY, key_id)
    sites, roles = person_sites_roles(call, key["person_id"])
    check_manage_person(call.caller, key["person_id"], sites, roles)
    return key


@TABLE.method("AddPersonKey", PERSONS, arg("person_id_or_email", Ref(PERSON)),
              arg("key_fields", Fields(KEY, "add")), returns="int", writes=True)
def add_person_key(call: Call, ref: object, fields: dict[str, Any]) -> int:
    """Add an ssh public key (RSA, ECDSA or ed25519; no options) to a person."""
    person = crud.resolve(call.conn, PERSON, ref)
    sites, roles = person_sites_roles(call, person["person_id"])
    check_manage_person(call.caller, person["person_id"], sites, roles)
    _check_key(call, fields)
    key_id = crud.insert_row(call.conn, KEY, {**fields, "person_id": person["person_id"]})
    call.event("Key", [key_id], fields)
    return key_id


@TABLE.method("UpdateKey", PERSONS, arg("key_id", Ref(KEY)), arg("key_fields", Fields(KEY, "update")),
              returns="int", writes=True)
def update_key(call: Call, key_id: object, fields: dict[str, Any]) -> int:
    """Replace a key's text or type."""
    key = _key_owner(call, key_id)
    _check_key(call, fields)
    crud.update_row(call.conn, KEY, key["key_id"], fields)
    call.event("Key", [key["key_id"]], fields)
    return 1


@TABLE.method("DeleteKey", PERSONS, arg("key_id", Ref(KEY)), returns="int", writes=True)
def delete_key(call: Call, key_id: object) -> int:
    """Delete a key."""
    key = _key_owner(call, key_id)
    crud.delete_row(call.conn, KEY, key["key_id"])
    call.event("Key", [key["key_id"]])
    return 1


@TABLE.method("BlacklistKey", ADMIN, arg("key_id", Ref(KEY)), returns="int", writes=True)
def blacklist_key(call: Call, key_id: object) -> int:
    """Delete a key, every copy of it, and refuse it from now on."""
    key = crud.resolve(call.conn, KEY, key_id)
    h = key_hash(key["key"])
    call.conn.execute(s.key_blacklist.insert().values(key_hash=h, time=call.now))
    same = [k for k, text in call.conn.execute(select(s.keys.c.key_id, s.keys.c.key))
            if key_hash(text) == h]
    call.conn.execute(delete(s.keys).where(s.keys.c.key_id.in_(same)))
    call.event("Key", same, {"blacklisted": True})
    return 1


lookup("GetRoles", EVERYONE, lambda: [{"role_id": k, "name": v} for k, v in ROLES.items()],
       "The roles: admin 10, pi 20, user 30, tech 40.")
