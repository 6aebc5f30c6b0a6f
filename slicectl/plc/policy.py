"""Who may do what: the caller, and PLCAPI's object rules as pure functions.

A method's role list admits a call; these rules then decide on the objects it touches.
Roles: admin 10, pi 20, user 30, tech 40 (a lower id is stronger); ``node`` and
``anonymous`` are pseudo-roles.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from .errors import InvalidArgument, PermissionDenied
from .objects import ROLE_IDS

ADMIN = frozenset({"admin"})
PI = frozenset({"admin", "pi"})
PERSONS = frozenset({"admin", "pi", "user", "tech"})
NODE = frozenset({"node"})
EVERYONE = PERSONS | NODE | {"anonymous"}

#: Slice tags anyone allowed to write the slice may set; all other tags seeded at start
#: carry resources and are admin-only.
MEMBER_TAGS = ("initscript", "initscript_code", "vref")
RESOURCE_TAGS = ("cpu_share", "cpu_pct", "net_min_rate", "net_max_rate", "net_max_kbyte",
                 "disk_max", "enabled", "nofile_hard", "nproc_hard", "vsys", "vsys_vnet",
                 "capabilities",
                 # slicectl's: the node ports reserved for the slice's slivers
                 "tcp_ports", "udp_ports")

WEEK_S = 7 * 86400
CREATE_LIFETIME_S = 2 * WEEK_S
MAX_RENEWAL_S = 8 * WEEK_S


@dataclass(frozen=True)
class Caller:
    """Who makes a call, as authentication established it."""

    kind: str  # person, node, anonymous
    roles: frozenset[str]
    name: str = "anonymous"
    person_id: int | None = None
    node_id: int | None = None
    site_ids: tuple[int, ...] = field(default=())

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def has(self, role: str, site_id: int | None) -> bool:
        return role in self.roles and site_id is not None and site_id in self.site_ids

    @property
    def strongest_role_id(self) -> int:
        return min((ROLE_IDS[r] for r in self.roles if r in ROLE_IDS), default=1000)


ANONYMOUS = Caller("anonymous", frozenset({"anonymous"}))


def deny(what: str) -> PermissionDenied:
    return PermissionDenied(what)


def allowed_by_roles(caller: Caller, roles: Collection[str]) -> bool:
    return bool(caller.roles & set(roles))


def check_update_site(caller: Caller, site_id: int, fields: Iterable[str]) -> None:
    if caller.is_admin:
        return
    if not caller.has("pi", site_id):
        raise deny("Not allowed to update this site")
    locked = sorted({"max_slices", "max_slivers", "login_base", "enabled"} & set(fields))
    if locked:
        raise deny(f"Only admins may change {locked[0]}")


def check_add_slice(caller: Caller, site_id: int) -> None:
    if not (caller.is_admin or caller.has("pi", site_id)):
        raise deny("Only a PI of the site may create slices with its login_base")


def may_write_slice(caller: Caller, site_id: int, member_ids: Collection[int]) -> bool:
    return (caller.is_admin or caller.has("pi", site_id)
            or ("user" in caller.roles and caller.person_id in member_ids))


def check_write_slice(caller: Caller, site_id: int, member_ids: Collection[int]) -> None:
    if not may_write_slice(caller, site_id, member_ids):
        raise deny("Not a member of this slice or a PI of its site")


def check_slice_members(caller: Caller, site_id: int) -> None:
    if not (caller.is_admin or caller.has("pi", site_id)):
        raise deny("Only admins and PIs of the slice's site may change its members")


def check_grant_role(caller: Caller, role_id: int, target_site_ids: Collection[int]) -> None:
    """Admins grant any role; a PI grants only weaker roles, to persons at their sites."""
    if caller.is_admin:
        return
    if "pi" not in caller.roles or not set(caller.site_ids) & set(target_site_ids):
        raise deny("Only admins and PIs of the person's site may change roles")
    if role_id <= ROLE_IDS["pi"]:
        raise deny("A PI may grant only roles weaker than pi")


def check_manage_person(caller: Caller, person_id: int, target_site_ids: Collection[int],
                        target_role_ids: Collection[int], self_ok: bool = True) -> None:
    """Admins; the person themself; a PI of one of the person's sites for persons not
    stronger than a PI."""
    if caller.is_admin or (self_ok and caller.person_id == person_id):
        return
    if ("pi" in caller.roles and set(caller.site_ids) & set(target_site_ids)
            and min(target_role_ids, default=1000) >= ROLE_IDS["pi"]):
        return
    raise deny("Not allowed to change this person")


def check_enable_person(caller: Caller, target_site_ids: Collection[int]) -> None:
    if caller.is_admin or ("pi" in caller.roles and set(caller.site_ids) & set(target_site_ids)):
        return
    raise deny("Only admins and PIs of the person's site may enable or disable persons")


def check_write_node(caller: Caller, site_id: int) -> None:
    if caller.is_admin or caller.has("pi", site_id) or caller.has("tech", site_id):
        return
    raise deny("Only admins and PIs or techs of the node's site may change nodes")


def check_write_tag(caller: Caller, tag_roles: Collection[str], writable: bool) -> None:
    """A tag needs one of its tag type's roles; non-admins also need write access to the
    object it is attached to."""
    if caller.is_admin:
        return
    if not writable:
        raise deny("Not allowed to change tags of this object")
    if not caller.roles & set(tag_roles):
        raise deny("This tag type is admin-only (it carries resources)")


def check_renewal(caller: Caller, now: int, expires: int, url: str | None,
                  description: str | None) -> None:
    """Renewal: in the future; for non-admins at most 8 weeks ahead and only for slices
    that say what they are (a non-empty url and description)."""
    if expires <= now:
        raise InvalidArgument(f"Invalid expires value: expected a time in the future, got {expires}")
    if caller.is_admin:
        return
    if expires > now + MAX_RENEWAL_S:
        raise InvalidArgument(f"Invalid expires value: expected at most 8 weeks from now "
                              f"({now + MAX_RENEWAL_S}), got {expires}")
    if not (url or "").strip() or not (description or "").strip():
        raise InvalidArgument("Invalid expires value: expected a slice with a url and a "
                              "description before renewal, got one without")
