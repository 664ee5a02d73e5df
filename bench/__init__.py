"""Benchmarks: BEIR retrieval, personalized passkey retrieval, encoding speed."""
