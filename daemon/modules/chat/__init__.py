"""Conversations: sessions, messages and personas in SQLite, and the context window fitted to the model."""
