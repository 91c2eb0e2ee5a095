"""The model registry: named models, their numbered versions and movable aliases.

The rules are `service.registry`'s; `/models/{ref}` takes `NAME@vN` and `NAME@ALIAS` besides
ids (`service.trained_models`).
"""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, jsonify
from marshmallow import RAISE, Schema, fields, validate

from service import outbox, registry
from service.api import Blueprint, db, json_only, page
from service.auth import current_key_id, current_owner
from service.schemas import ErrorSchema, PageQuerySchema, page_of

blp = Blueprint(
    "registry",
    __name__,
    url_prefix="/registry",
    description="The model registry: named models with numbered versions and movable aliases "
    "(`NAME@vN`, `NAME@ALIAS` wherever a model id is taken).",
)

NAME_PARAM = {
    "in": "path",
    "name": "name",
    "required": True,
    "description": f"The registered model's name: {registry.NAME_RULE}.",
    "schema": {"type": "string", "pattern": f"^{registry.NAME_PATTERN.pattern}$"},
}
ALIAS_PARAM = {
    "in": "path",
    "name": "alias",
    "required": True,
    "description": f"The alias: {registry.ALIAS_RULE}; `v<digits>` is reserved (`NAME@v3`).",
    "schema": {"type": "string", "pattern": f"^{registry.ALIAS_PATTERN.pattern}$"},
}


class RegistryVersionInSchema(Schema):
    model_id = fields.String(
        required=True,
        validate=validate.Length(min=1, max=200),
        metadata={"description": "One of your models (an id, or a reference `NAME@ALIAS`)."},
    )


class RegistryVersionSchema(Schema):
    version = fields.Integer(metadata={"description": "From 1, per name."})
    model_id = fields.String()
    created_at = fields.DateTime()
    key_id = fields.String(
        allow_none=True, metadata={"description": "The API key that registered it (null: a job)."}
    )


class RegistryVersionEntrySchema(RegistryVersionSchema):
    job_id = fields.String(metadata={"description": "The job that trained the model."})


class RegistryVersionCreatedSchema(RegistryVersionSchema):
    name = fields.String()


class RegistryAliasInSchema(Schema):
    version = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))


class RegistryMoveSchema(Schema):
    from_ = fields.Integer(
        data_key="from", allow_none=True, metadata={"description": "null: created."}
    )
    to = fields.Integer(allow_none=True, metadata={"description": "null: deleted."})
    at = fields.DateTime()
    key_id = fields.String(allow_none=True, metadata={"description": "Who moved it."})


class RegistryAliasSchema(Schema):
    alias = fields.String()
    version = fields.Integer()
    model_id = fields.String()
    updated_at = fields.DateTime()
    history = fields.List(
        fields.Nested(RegistryMoveSchema), metadata={"description": "Oldest first."}
    )


class RegisteredSummarySchema(Schema):
    name = fields.String()
    latest_version = fields.Integer()
    aliases = fields.Dict(
        keys=fields.String(), values=fields.Integer(), metadata={"description": "alias -> version"}
    )
    created_at = fields.DateTime()


class RegisteredSchema(Schema):
    name = fields.String()
    latest_version = fields.Integer()
    created_at = fields.DateTime()
    versions = fields.List(fields.Nested(RegistryVersionEntrySchema))
    aliases = fields.List(fields.Nested(RegistryAliasSchema))


RegisteredPageSchema = page_of(RegisteredSummarySchema, "RegisteredModelPage")


def _alias_view(name: str, alias: str) -> dict[str, Any]:
    described = registry.describe(db(), current_owner(), name)
    return next(a for a in described["aliases"] if a["alias"] == alias)


def _publish(move_id: str) -> None:
    outbox.publish_recorded(db(), current_app.extensions["celery"], [move_id])


@blp.route("")
@blp.arguments(PageQuerySchema, location="query", unknown=RAISE)
@blp.response(200, RegisteredPageSchema)
def list_registered(query: dict[str, Any]) -> dict[str, Any]:
    """List your registered models by name: latest version and aliases.

    Paginated with `page` (from 1) and `page_size` (1 to 100)."""
    items, total = registry.list_registered(
        db(), current_owner(), query["page"], query["page_size"]
    )
    return page(items, total, query)


@blp.route("/<name>")
@blp.doc(parameters=[NAME_PARAM])
@blp.response(200, RegisteredSchema)
@blp.alt_response(404, schema=ErrorSchema, description="No registered model by that name.")
def get_registered(name: str) -> dict[str, Any]:
    """A registered model: its versions (model ids, when, by which key) and its aliases, each
    with the history of its moves (`from`, `to`, `at`, `key_id`)."""
    return registry.describe(db(), current_owner(), name)


@blp.route("/<name>/versions", methods=["POST"])
@json_only
@blp.doc(parameters=[NAME_PARAM])
@blp.arguments(RegistryVersionInSchema)
@blp.response(201, RegistryVersionCreatedSchema)
@blp.alt_response(404, schema=ErrorSchema, description="No such model (`model_id`).")
@blp.alt_response(422, schema=ErrorSchema, description="An invalid name.")
def register(data: dict[str, Any], name: str) -> dict[str, Any]:
    """Register a model as the next version of `name` (the first registration creates the
    name; versions count from 1; concurrent registrations get distinct numbers)."""
    session = db()
    version = registry.register_version(
        session, current_owner(), name, data["model_id"], current_key_id()
    )
    session.commit()
    return registry.serialize_version(session, version)


@blp.route("/<name>/aliases/<alias>", methods=["PUT"])
@json_only
@blp.arguments(RegistryAliasInSchema)
@blp.doc(parameters=[NAME_PARAM, ALIAS_PARAM])
@blp.response(200, RegistryAliasSchema, description="Moved (or already there).")
@blp.alt_response(201, schema=RegistryAliasSchema, description="Created.")
@blp.alt_response(404, schema=ErrorSchema, description="No registered model by that name.")
@blp.alt_response(422, schema=ErrorSchema, description="An invalid alias, or no such version.")
def set_alias(data: dict[str, Any], name: str, alias: str) -> Response:
    """Point an alias at a version: one UPDATE, so every caller of `NAME@ALIAS` switches at
    once (a request answers with the old version or the new one); moving it back is a
    rollback. Each move is kept in the alias's `history` and sent to the webhooks subscribed
    to `registry.alias_moved`."""
    session = db()
    created, move = registry.set_alias(
        session, current_owner(), name, alias, data["version"], current_key_id()
    )
    session.commit()
    if move is not None:
        _publish(move.id)
    response = jsonify(_alias_view(name, alias))
    response.status_code = 201 if created else 200
    return response


@blp.route("/<name>/aliases/<alias>", methods=["DELETE"])
@blp.doc(parameters=[NAME_PARAM, ALIAS_PARAM])
@blp.response(204, description="Deleted (recorded as a move to `null`).")
@blp.alt_response(404, schema=ErrorSchema, description="No such registered model or alias.")
def delete_alias(name: str, alias: str) -> Response:
    """Delete an alias: `NAME@ALIAS` names nothing from now on (its history is kept)."""
    session = db()
    move = registry.delete_alias(session, current_owner(), name, alias, current_key_id())
    session.commit()
    _publish(move.id)
    return Response(status=204)
