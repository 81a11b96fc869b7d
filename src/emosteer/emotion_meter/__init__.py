"""The per-token emotion meter (docs/meter.md).

meter.py        Meter (directions over a layer band and their calibration), load_meter, the
                shipped meter of a bundled model
read.py         meter / metering: readings of a text, or of each token while generating,
                through read-only hooks
fit.py          fitting the band and the calibration on the shipped corpus
"""
