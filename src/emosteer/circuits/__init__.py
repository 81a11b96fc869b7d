"""Emotion circuits (arXiv 2510.11328): the heads and neurons that write each emotion.

`discover` finds them on the SEV dataset, `EmotionCircuit` holds them as a file, and
`modulate` expresses an emotion through them while the model generates.
"""

from emosteer.circuits.circuit import EmotionCircuit, modulate
from emosteer.circuits.discover import DiscoverConfig, Discovery, discover

__all__ = ["DiscoverConfig", "Discovery", "EmotionCircuit", "discover", "modulate"]
