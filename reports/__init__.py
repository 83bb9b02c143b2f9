"""Jinja templates for atlas status and benchmark reports."""
