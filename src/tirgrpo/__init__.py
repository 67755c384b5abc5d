"""tirgrpo: train small language models with GRPO to judge tool-integrated math reasoning."""

__version__ = "0.1.0"
