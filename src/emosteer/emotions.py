"""The emotion names emosteer knows, in one place.

VECTOR_EMOTIONS are the five basic emotions of the emotion-vectors paper (its EmotionQuery
set); CIRCUIT_EMOTIONS add surprise, the sixth emotion of the emotion-circuits paper (its SEV
set); JUDGE_LABELS add "neutral", what a judge can also read in a text.
"""

from __future__ import annotations

VECTOR_EMOTIONS: tuple[str, ...] = ("joy", "anger", "sadness", "fear", "disgust")
CIRCUIT_EMOTIONS: tuple[str, ...] = (*VECTOR_EMOTIONS, "surprise")
JUDGE_LABELS: tuple[str, ...] = (*CIRCUIT_EMOTIONS, "neutral")
