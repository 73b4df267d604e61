"""Identity: users, roles, passwords, tokens, the principal, and the flows and APIs on them.

Other features import two modules of it, and only these (tests/service/test_architecture.py
holds them to it): `service.identity.principal` (Principal, Role) and
`service.identity.dependencies` (CurrentPrincipal, current_principal, require_role,
WriteRateLimit). Everything else in this package is identity's own.
"""
