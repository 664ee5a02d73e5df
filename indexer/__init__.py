"""Corpus reading and the persistent vector store (FAISS + SQLite)."""
