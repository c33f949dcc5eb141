"""Webhooks: endpoints that services register, and the worker that delivers the feed's events to them."""
