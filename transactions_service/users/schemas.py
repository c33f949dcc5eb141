"""Shape of the user resource."""

from marshmallow import Schema, fields

from ..transactions.schemas import StrictSchema, Timestamp


class UserSchema(Schema):
    id = fields.UUID()
    created_at = Timestamp()


class RegisterUserSchema(StrictSchema):
    """The body of a registration: empty today; unknown fields are refused."""
