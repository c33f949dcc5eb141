"""HTTP views for registering users."""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, jsonify, request

from ..auth import authenticated, current_caller
from ..scopes import WRITE_USERS
from ..http import load_body
from . import service
from .schemas import RegisterUserSchema, UserSchema

bp = Blueprint("users", __name__, url_prefix="/api")

_register = RegisterUserSchema()
_user = UserSchema()


@bp.put("/users/<uuid:user_id>")
@authenticated
def register_user(user_id: uuid.UUID) -> tuple[Response, int]:
    current_caller().require_scope(WRITE_USERS)
    if request.content_length:
        load_body(_register)
    created_at, created = service.register_user(user_id)
    return jsonify(_user.dump({"id": user_id, "created_at": created_at})), 201 if created else 200
