"""Authentication: passwords, access and refresh tokens, the request's principal."""
