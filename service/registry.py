"""The model registry: an owner's names for series of models, their numbered versions and the
movable aliases (`champion`) that point at one version each.

- **References.** Wherever a model is taken (`/models/{ref}...`, the client, the CLI) `ref` is
  a model id, `NAME@vN` (version N) or `NAME@ALIAS`. `model_id_clause` turns a reference into
  the model id *as SQL* (a scalar subquery), read in the very statement that reads the model
  (`service.trained_models`): a request sees an alias before or after a move, never half way.
- **Versions** count from 1 per name. A registration increments the name's `last_version`
  with one UPDATE (a row lock on PostgreSQL, the write lock on SQLite), so concurrent
  registrations get distinct numbers in the order they commit; `(name, version)` is unique
  besides. The first registration of a name creates it (an INSERT that, losing a race to
  another, reads the winner's row).
- **Aliases** move by one UPDATE in one transaction, which also appends the move
  (`alias_moves`: from, to, when, which key; `from` is the last move's `to`, read under the
  UPDATE's lock) and records the `registry.alias_moved` webhook deliveries
  (`service.outbox`); the API view publishes them after the commit. Deleting an alias is a
  move to nothing (`to: null`). Alias names of the form `v<digits>` are reserved (`NAME@v3`
  is version 3).
- A job's or a sweep's `register_as` registers its (best) model in the transaction of its
  success (`service.lifecycle.succeed`, `service.sweeps.advance`): `register_version`.

This module writes only the registry's tables (and, through the outbox, delivery rows).
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service import outbox
from service.db import iso_utc, paginate, utcnow
from service.problems import ApiError, InputError
from service.tables import (
    AliasMove,
    ModelAlias,
    ModelVersion,
    RegisteredModel,
    TrainedModel,
    is_id,
)

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ALIAS_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
VERSION_PATTERN = re.compile(r"v([1-9][0-9]{0,8})")
NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or a digit"
ALIAS_RULE = "1 to 64 letters, digits, '_' or '-', starting with a letter"

R, V, A, M = RegisteredModel, ModelVersion, ModelAlias, AliasMove


def check_name(name: str, field: str = "name") -> str:
    """`name` if it may name a registered model, else a 422 naming `field`."""
    if not NAME_PATTERN.fullmatch(name):
        raise InputError(field, f"{name[:80]!r} is not a valid model name: {NAME_RULE}")
    return name


def check_alias(alias: str, field: str = "alias") -> str:
    """`alias` if it may name an alias, else a 422 naming `field` (`v<digits>` is reserved)."""
    if not ALIAS_PATTERN.fullmatch(alias):
        raise InputError(field, f"{alias[:80]!r} is not a valid alias: {ALIAS_RULE}")
    if re.fullmatch(r"[vV][0-9]+", alias):
        raise InputError(field, f"{alias!r} is reserved: NAME@vN names version N")
    return alias


# -- references ----------------------------------------------------------------------------------


def model_id_clause(ref: str, owner: str) -> sa.ColumnElement[Any] | None:
    """The id of the model `ref` names, as SQL to compare `models.id` with: the id itself, or
    a scalar subquery resolving `NAME@vN` / `NAME@ALIAS` among `owner`'s names in the
    statement that uses it. None for what can name no model."""
    if is_id(ref):
        return sa.literal(ref, sa.String)
    name, at, tail = ref.partition("@")
    if not at or not NAME_PATTERN.fullmatch(name):
        return None
    version = VERSION_PATTERN.fullmatch(tail)
    if version is not None:
        query = (
            sa.select(V.model_id)
            .join(R, R.id == V.registered_model_id)
            .where(R.owner == owner, R.name == name, V.version == int(version[1]))
        )
    elif ALIAS_PATTERN.fullmatch(tail):
        query = (
            sa.select(V.model_id)
            .select_from(A)
            .join(R, R.id == A.registered_model_id)
            .join(
                V, sa.and_(V.registered_model_id == A.registered_model_id, V.version == A.version)
            )
            .where(R.owner == owner, R.name == name, A.alias == tail)
        )
    else:
        return None
    return query.scalar_subquery()


def not_found(ref: str) -> ApiError:
    if "@" in ref:
        return ApiError(
            404, f"No model {ref!r}: no registered model, version or alias by that name."
        )
    return ApiError(404, f"No model with id {ref!r}.")


# -- writing -------------------------------------------------------------------------------------


def _registered(session: Session, owner: str, name: str) -> RegisteredModel | None:
    return session.scalars(sa.select(R).where(R.owner == owner, R.name == name)).one_or_none()


def get_registered(session: Session, owner: str, name: str) -> RegisteredModel:
    found = _registered(session, owner, name) if NAME_PATTERN.fullmatch(name) else None
    if found is None:
        raise ApiError(404, f"No registered model {name!r}.")
    return found


def _get_or_create(session: Session, owner: str, name: str) -> RegisteredModel:
    found = _registered(session, owner, name)
    if found is not None:
        return found
    try:
        with session.begin_nested():
            session.add(R(owner=owner, name=name))
    except sa.exc.IntegrityError:  # another registration made it meanwhile: use its row
        pass
    found = _registered(session, owner, name)
    assert found is not None
    return found


def register_version(
    session: Session, owner: str, name: str, model_id: str, key_id: str | None = None
) -> ModelVersion:
    """Make `owner`'s model `model_id` the next version of `name` (created if new); flushed,
    the caller commits. `model_id` may be a reference (`NAME@ALIAS`); 404 naming it if it
    names none of the owner's models."""
    check_name(name)
    clause = model_id_clause(model_id, owner)
    found = None
    if clause is not None:
        found = session.scalar(
            sa.select(TrainedModel.id).where(
                TrainedModel.id == clause,
                TrainedModel.owner == owner,
                TrainedModel.deleted_at.is_(None),
            )
        )
    if found is None:
        message = f"no model {model_id!r}"
        raise ApiError(404, message, {"model_id": message})
    registered = _get_or_create(session, owner, name)
    number = session.execute(
        sa.update(R)
        .where(R.id == registered.id)
        .values(last_version=R.last_version + 1)
        .returning(R.last_version)
    ).scalar_one()
    version = V(registered_model_id=registered.id, version=number, model_id=found, key_id=key_id)
    session.add(version)
    session.flush()
    return version


def _last_target(session: Session, registered_id: str, alias: str) -> int | None:
    """Where the alias's last move took it (null: deleted, or never moved)."""
    return session.scalar(
        sa.select(M.to_version)
        .where(M.registered_model_id == registered_id, M.alias == alias)
        .order_by(M.seq.desc())
        .limit(1)
    )


def _record_move(
    session: Session,
    registered: RegisteredModel,
    alias: str,
    previous: int | None,
    version: int | None,
    key_id: str | None,
) -> AliasMove:
    move = M(
        registered_model_id=registered.id,
        alias=alias,
        from_version=previous,
        to_version=version,
        key_id=key_id,
        at=utcnow(),
    )
    session.add(move)
    session.flush()
    model_id = (
        None
        if version is None
        else session.scalar(
            sa.select(V.model_id).where(
                V.registered_model_id == registered.id, V.version == version
            )
        )
    )
    data = {"name": registered.name, "alias": alias, **serialize_move(move), "model_id": model_id}
    outbox.enqueue_for_alias_move(session, registered.owner, move.id, move.at, data)
    return move


def set_alias(
    session: Session, owner: str, name: str, alias: str, version: int, key_id: str | None = None
) -> tuple[bool, AliasMove | None]:
    """Point `name@alias` at `version` (one UPDATE, or the INSERT that creates the alias) and
    append the move, with its webhook deliveries; flushed, the caller commits. Returns
    (created, the move: None when the alias already pointed there)."""
    check_alias(alias)
    registered = get_registered(session, owner, name)
    exists = session.scalar(
        sa.select(V.id).where(V.registered_model_id == registered.id, V.version == version)
    )
    if exists is None:
        raise InputError("version", f"{name!r} has no version {version}")
    where = (A.registered_model_id == registered.id, A.alias == alias)
    values = {"version": version, "updated_at": utcnow()}
    created = False
    if session.execute(sa.update(A).where(*where).values(**values)).rowcount == 0:
        try:
            with session.begin_nested():
                session.add(A(registered_model_id=registered.id, alias=alias, **values))
            created = True
        except sa.exc.IntegrityError:  # created meanwhile by another request: move it
            session.execute(sa.update(A).where(*where).values(**values))
    previous = _last_target(session, registered.id, alias)  # under the UPDATE's lock
    if previous == version and not created:
        return False, None
    return created, _record_move(session, registered, alias, previous, version, key_id)


def delete_alias(
    session: Session, owner: str, name: str, alias: str, key_id: str | None = None
) -> AliasMove:
    """Delete `name@alias` (a move to nothing, recorded); 404 if there is no such alias."""
    registered = get_registered(session, owner, name)
    gone = session.execute(
        sa.delete(A).where(A.registered_model_id == registered.id, A.alias == alias)
    ).rowcount
    if not gone:
        raise ApiError(404, f"{name!r} has no alias {alias!r}.")
    previous = _last_target(session, registered.id, alias)
    return _record_move(session, registered, alias, previous, None, key_id)


# -- reading -------------------------------------------------------------------------------------


def serialize_move(move: AliasMove) -> dict[str, Any]:
    return {
        "from": move.from_version,
        "to": move.to_version,
        "at": iso_utc(move.at),
        "key_id": move.key_id,
    }


def list_registered(
    session: Session, owner: str, page: int, page_size: int
) -> tuple[list[dict[str, Any]], int]:
    """A page of `owner`'s registered models by name: `name`, `latest_version`, `aliases`
    (alias -> version), `created_at`."""
    rows, total = paginate(
        session, sa.select(R).where(R.owner == owner).order_by(R.name), page, page_size
    )
    aliases: dict[str, dict[str, int]] = {r.id: {} for r in rows}
    if rows:
        for a in session.scalars(
            sa.select(A).where(A.registered_model_id.in_(list(aliases))).order_by(A.alias)
        ):
            aliases[a.registered_model_id][a.alias] = a.version
    items = [
        {
            "name": r.name,
            "latest_version": r.last_version,
            "aliases": aliases[r.id],
            "created_at": iso_utc(r.created_at),
        }
        for r in rows
    ]
    return items, total


def describe(session: Session, owner: str, name: str) -> dict[str, Any]:
    """`owner`'s registered model `name`: its versions (their model and job ids) and aliases,
    each with its history of moves, oldest first."""
    registered = get_registered(session, owner, name)
    versions = session.execute(
        sa.select(V, TrainedModel.job_id)
        .join(TrainedModel, TrainedModel.id == V.model_id)
        .where(V.registered_model_id == registered.id)
        .order_by(V.version)
    ).all()
    model_of = {v.version: v.model_id for v, _ in versions}
    history: dict[str, list[dict[str, Any]]] = {}
    for move in session.scalars(
        sa.select(M).where(M.registered_model_id == registered.id).order_by(M.seq)
    ):
        history.setdefault(move.alias, []).append(serialize_move(move))
    aliases = session.scalars(
        sa.select(A).where(A.registered_model_id == registered.id).order_by(A.alias)
    ).all()
    return {
        "name": registered.name,
        "latest_version": registered.last_version,
        "created_at": iso_utc(registered.created_at),
        "versions": [
            {
                "version": v.version,
                "model_id": v.model_id,
                "job_id": job_id,
                "created_at": iso_utc(v.created_at),
                "key_id": v.key_id,
            }
            for v, job_id in versions
        ],
        "aliases": [
            {
                "alias": a.alias,
                "version": a.version,
                "model_id": model_of.get(a.version),
                "updated_at": iso_utc(a.updated_at),
                "history": history.get(a.alias, []),
            }
            for a in aliases
        ],
    }


def serialize_version(session: Session, version: ModelVersion) -> dict[str, Any]:
    name = session.scalar(sa.select(R.name).where(R.id == version.registered_model_id))
    return {
        "name": name,
        "version": version.version,
        "model_id": version.model_id,
        "created_at": iso_utc(version.created_at),
        "key_id": version.key_id,
    }


def registrations(session: Session, model_id: str) -> list[dict[str, Any]]:
    """Where a model is registered: `{"name", "version", "aliases": [...]}` each."""
    rows = session.execute(
        sa.select(R.name, V.version, A.alias)
        .select_from(V)
        .join(R, R.id == V.registered_model_id)
        .outerjoin(
            A, sa.and_(A.registered_model_id == V.registered_model_id, A.version == V.version)
        )
        .where(V.model_id == model_id)
        .order_by(R.name, V.version, A.alias)
    ).all()
    out: dict[tuple[str, int], list[str]] = {}
    for name, version, alias in rows:
        out.setdefault((name, version), [])
        if alias is not None:
            out[(name, version)].append(alias)
    return [{"name": n, "version": v, "aliases": a} for (n, v), a in out.items()]
