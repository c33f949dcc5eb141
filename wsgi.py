"""WSGI entry point: ``gunicorn wsgi:app`` or ``flask --app wsgi ...``."""

from transactions_service import create_app

app = create_app()
