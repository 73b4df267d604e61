"""Database plumbing shared by every feature: metadata, engines, sessions."""
