"""Finding emotion vectors (docs/extraction.md).

extract.py      ExtractConfig, extract: emotion-conditioned minus neutral layer outputs, and
                the methods built on them (filter, context, scale, band, trained)
answers.py      where the answers come from: generated, written by us, prefill, few-shot
capture.py      reading a site's outputs over chosen token positions
contrast.py     read_pairs: last-token contrast pairs (the peers' recipe)
bands.py        layer bands: a fixed window or the scan that chooses one
scales.py       site norms and spreads, and norm_scaled
train.py        optimised vectors: a preference objective with the model frozen
"""
