"""Tenant documents: customs-style declarations on MongoDB, processed in the background."""
