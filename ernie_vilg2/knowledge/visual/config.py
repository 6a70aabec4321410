"""visual_knowledge section of the config (placeholder: the visual-knowledge helper extends it)."""
from dataclasses import dataclass


@dataclass
class VisualKnowledgeConfig:
    enabled: bool = False
