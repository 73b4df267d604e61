"""Tenants: the registry of tenant databases, their engines and the request's tenant."""
