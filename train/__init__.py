"""Contrastive LoRA fine-tuning of embedding models (the E5-mistral recipe)."""
