"""HTTP views for registering users."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from ..auth import authenticated, current_caller
from ..http import load_body, path_uuid
from ..ledger import policy, rules
from .schemas import RegisterUserSchema, UserSchema

bp = Blueprint("users", __name__, url_prefix="/api")

_register = RegisterUserSchema()
_user = UserSchema()


@bp.put("/users/<uuid:user_id>")
@authenticated
def register_user(user_id: str) -> tuple[Response, int]:
    policy.require_register(current_caller())
    registered_id = path_uuid("user_id", user_id)
    settings = load_body(_register) if request.content_length else {}
    registration = rules.register_user(registered_id, **settings)
    body = _user.dump({"id": registered_id, "created_at": registration.created_at,
                       "low_balance_threshold": rules.low_balance_threshold(registered_id)})
    return jsonify(body), 201 if registration.created else 200
