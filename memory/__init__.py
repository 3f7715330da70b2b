"""The librarian's long-term memory: past post-mortems, stored in ChromaDB and searched by symptom."""

from memory.embeddings import WordLlamaEmbeddingFunction, load_model
from memory.store import COLLECTION, PostMortemStore, document_text

__all__ = ["COLLECTION", "PostMortemStore", "WordLlamaEmbeddingFunction", "document_text", "load_model"]
