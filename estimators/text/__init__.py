"""Text as estimator input: sentence embeddings (N×384 for the packaged MiniLM) and token ids for fine-tuning."""

from estimators.text.embed import EmbeddingInfo, embed_texts, tokenize_texts

__all__ = ["EmbeddingInfo", "embed_texts", "tokenize_texts"]
