"""The frontier's methods: each a way to get vectors (an ExtractConfig change, a folder, or
none for prompting) and a grid of strengths (and layer bands) to search on calibration."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from emosteer.extraction.extract import RECOMMENDED
from emosteer.steering import Positions

Band = tuple[float, float] | None  # a window of the vector's layers, as fractions; None: all


@dataclass(frozen=True)
class Method:
    """One way of steering as the frontier tries it.

    Args:
        name: the row name in tables (and the condition variant in the caches' records).
        strengths: the alphas tried on the calibration split (0, unsteered, is always tried).
        folder: the vectors' folder under the frontier's vectors directory (default: name).
        bands: windows of the vector's layers tried at every strength, as fractions of its
            layer list ((1/3, 2/3): the middle third); None: every layer the file has.
        prompt: no vector: the emotion asked for in the system prompt (one setting).
        extract: ExtractConfig changes that make this method's vectors (`build_vectors`);
            None when the method reuses another method's folder.
        positions: "all" steers the prompt and the answer; "generated" only each newest
            position, so the prompt is read unsteered (`steer`).
        preserve_norm: each steered position is rescaled to its norm before the addition.
        with_prompt: the emotion is also asked for in the system prompt (prompt + steer).

    Example:
        Method("band", (1.0, 2.0), folder="mean_diff", bands=((0.0, 0.5), (0.5, 1.0)))
    """

    name: str
    strengths: tuple[float, ...] = ()
    folder: str | None = None
    bands: tuple[Band, ...] = (None,)
    prompt: bool = False
    extract: Mapping[str, Any] | None = field(default_factory=dict)
    positions: Positions = "all"
    preserve_norm: bool = False
    with_prompt: bool = False

    @property
    def source(self) -> str:
        """The folder the vectors are read from."""
        return self.folder or self.name


THIRDS: tuple[Band, ...] = ((0.0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1.0))


def at_depth(*depths: float) -> tuple[Band, ...]:
    """One-layer bands at fractions of the depth (0.4: layer 12 of 30)."""
    return tuple((d, d + 0.01) for d in depths)


WRITTEN = {"answers": "written", "limit": 100}  # our answers to all 100 questions per emotion
RESIDUAL = {**WRITTEN, "site": "residual", "scale": "norm", "norm_fraction": 0.1}
# one residual layer, strength s adds 0.1 * s x the layer's RMS token norm (the dose)
METHODS: tuple[Method, ...] = (
    # the paper's; on the bundled model alpha 1 already costs ~1.35x PPL (docs/results.md)
    Method("mean_diff", (0.5, 0.75, 1.0)),
    Method("centered", (1.0, 2.0, 3.0), extract={"center": True}),  # PPL x1.27 at 2 (results)
    Method("band", (2.0, 3.0), folder="mean_diff", bands=THIRDS, extract=None),
    Method("band_auto", (1.5, 2.0, 3.0), extract={"band": "auto", "band_width": 10}),
    Method("norm", (1.0, 1.5, 2.0), extract={"scale": "norm", "norm_fraction": 0.1}),
    Method("filtered", (0.5, 0.75, 1.0), extract={"filter": "judge", "judge": "embedded-a"}),
    # the recommended settings (RECOMMENDED: judge A's filter, the emotional answer re-read
    # under the neutral prompt) on the frontier's 40 questions, and on all 100 per emotion
    # (`emosteer extract`'s default count): the shipped vectors (docs/frontier.md)
    Method("filtered_ctx", (0.5, 0.75, 1.0, 1.5), extract=dict(RECOMMENDED)),
    Method("filtered_ctx_100", (0.5, 0.75, 1.0, 1.5), extract={**RECOMMENDED, "limit": 100}),
    # the same, each emotion's questions answered again (up to 4 times) until judge A has
    # confirmed 70 answers: the filter kept 18 disgust and 42 anger answers of 100, joy 72
    Method("filtered_ctx_more", (0.5, 0.75, 1.0, 1.5),
           extract={**RECOMMENDED, "limit": 100, "min_confirmed": 70, "rounds": 4}),
    # the shipped recipe's vectors added at the answer's positions only, the prompt read
    # unsteered (the vectors paper's apply script steers this way)
    Method("filtered_ctx_100_generated", (0.75, 1.0, 1.5, 2.0), folder="filtered_ctx_100",
           extract=None, positions="generated"),
    # the shipped recipe's vectors on one third of the layers at a time
    Method("filtered_ctx_100_band", (1.5, 2.0, 3.0), folder="filtered_ctx_100", bands=THIRDS,
           extract=None),
    Method("trained", (0.5, 1.0, 1.5), extract={"method": "trained"}),
    # the shipped recipe's vector optimised (train.py) on the answer pairs its filter kept:
    # the preference for the confirmed emotional answer over the neutral one, the KL on fluency
    Method("trained_ctx_100", (0.25, 0.5, 0.75, 1.0, 1.5),
           extract={**RECOMMENDED, "limit": 100, "method": "trained"}),
    Method("prompt", prompt=True, extract=None),
    # the vectors shipped from 2026-12-02 (filtered_ctx_100, calibrated: alpha 1 is their
    # chosen strength), copied from the package into <vectors>/filtered_ctx_100_shipped/
    Method("filtered_ctx_100_shipped", (1.0,), extract=None),
    # issue 29: the answers we wrote (data/written_answers.jsonl), read teacher-forced under the
    # neutral prompt, at the attention output of every layer ...
    Method("written", (0.5,), extract=WRITTEN),
    # minus the mean of the five (EV_base): what every emotional answer shares is removed
    Method("written_centered", (2.0,), extract={**WRITTEN, "center": True}),
    # the written vector optimised (train.py) to prefer our emotional answer over our neutral
    # one, teacher-forced, with the KL on fluency (BiPO / RePS; no judge in the loss)
    Method("written_trained", (0.25,), extract={**WRITTEN, "method": "trained"}),
    Method("written_keepnorm", (0.5,), folder="written", extract=None, preserve_norm=True),
    # ... and the field's recipe: one residual layer at 20-70% of the depth, a relative dose
    Method("written_residual", (1.2,), extract=RESIDUAL, bands=at_depth(0.2, 0.5)),
    Method("written_residual_keepnorm", (1.2,), folder="written_residual", extract=None,
           bands=at_depth(0.4), preserve_norm=True),
    # prompt + steer: the emotion asked for in the system prompt, with a smaller vector
    Method("written_prompt", (0.25,), folder="written", extract=None, with_prompt=True),
    Method("filtered_ctx_100_shipped_prompt", (0.5,), folder="filtered_ctx_100_shipped",
           extract=None, with_prompt=True),
    # the shipped vectors projected off the apology an "I'm sorry" opening adds to our neutral
    # answers (extraction.apology; folder written by scripts/apology_vectors.py)
    Method("filtered_ctx_100_shipped_noapology", (1.0, 1.5), extract=None),
    # the model continues our answer's first sentence; two of our exchanges before the question
    Method("prefill", (0.5, 1.0, 1.5), extract={"answers": "prefill", "limit": 40}),
    Method("fewshot", (0.5, 1.0, 1.5), extract={"answers": "fewshot", "limit": 40}),
)
"""The methods of issues 15 and 29, each with its grid of strengths (and bands); the grids follow
the first method pilot (docs/results.md, where the PPL bound sits (the written_* grids:
the best setting within the bounds of the wider grid that scripts/frontier_screen.py tried on
fewer calibration questions, docs/frontier.md)); `filtered` filters with
judge A, so judge B never saw anything it chose."""
