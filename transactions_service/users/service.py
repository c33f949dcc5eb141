"""Registering users: the ledger only needs to know that an id exists."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from ..extensions import db
from .models import User


def register_user(user_id: uuid.UUID) -> tuple[datetime, bool]:
    """Insert the user if new; returns (created_at, created)."""
    created_at = db.session.scalar(
        insert(User).values(id=user_id).on_conflict_do_nothing(index_elements=[User.id]).returning(User.created_at)
    )
    if created_at is not None:
        db.session.commit()
        return created_at, True
    existing = db.session.scalar(select(User.created_at).where(User.id == user_id))
    db.session.rollback()
    return existing, False
