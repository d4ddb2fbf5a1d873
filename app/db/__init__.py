"""Database: models, engine/session, and repository functions."""
