"""The apology direction and vectors projected off it (issue 29), on a tiny random model."""

from __future__ import annotations

import torch
from conftest import byte_tokenizer, tiny_model
from live_server import random_vectors

from emosteer.extraction.apology import APOLOGIES, apology_direction, without


def test_the_apology_direction_and_a_vector_without_it():
    model, tok = tiny_model("llama"), byte_tokenizer()
    sorry = apology_direction(model, tok, limit=6, batch_size=4)
    assert sorry.layers == list(range(model.config.num_hidden_layers))
    assert sorry.meta["emotion"] == "apology" and int(sorry.meta["n_queries"]) == 6
    assert all(d.norm() > 0 for d in sorry.directions.values())
    joy = random_vectors(model, scale=1.0)["joy"]
    mixed = joy + sorry * 3.0  # a vector carrying the apology
    plain = without(mixed, sorry)
    for layer, d in sorry.directions.items():
        u = torch.nn.functional.normalize(d, dim=0)
        size = float(mixed.directions[layer].norm())
        assert abs(float(plain.directions[layer] @ u)) < 1e-4 * size
        assert plain.directions[layer].norm() < mixed.directions[layer].norm()
    assert plain.meta["projected_off"] == "apology"
    assert 0 < float(plain.meta["projected_cosine"]) <= 1
    assert len(set(APOLOGIES)) == len(APOLOGIES) and all(a.endswith(" ") for a in APOLOGIES)
