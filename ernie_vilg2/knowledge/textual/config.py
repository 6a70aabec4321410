"""textual_knowledge section of the config (placeholder: the textual-knowledge helper extends it)."""
from dataclasses import dataclass


@dataclass
class TextualKnowledgeConfig:
    enabled: bool = False
