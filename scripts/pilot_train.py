"""Pilot of the optimiser's settings on the bundled model: loss, margin, KL and step time.

    python scripts/pilot_train.py --emotion anger --steps 100 --lr 0.005 --lr 0.02

Trains from the pilot's cached generations (scripts/pilot_methods.py vectors makes them)
and prints, per setting, the curves' start and end and the seconds per step; each trained
vector is saved in runs/pilot/train/<emotion>-<setting>.safetensors, for pilot_methods eval
to score (--methods trained:<setting>). No judge: only token ids and logits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace

import torch

from emosteer.extraction import ExtractConfig, extract
from emosteer.files import write_text
from emosteer.train import TrainConfig

sys.path.insert(0, "scripts")
from pilot_methods import OUT, load_generations


def setting_name(cfg: TrainConfig, band: str) -> str:
    return (f"lr{cfg.lr:g}-kl{cfg.kl_weight:g}-b{cfg.beta:g}-s{cfg.steps}-p{cfg.pairs_per_step}"
            f"-t{cfg.max_answer_tokens}-{cfg.init}{'' if cfg.bidirectional else '-uni'}-{band}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emotion", action="append", required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, action="append")
    parser.add_argument("--kl", type=float, action="append")
    parser.add_argument("--beta", type=float, default=2.0)
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--init", default="mean_diff")
    parser.add_argument("--unidirectional", action="store_true")
    parser.add_argument("--band", default="all", help="all, auto or start-stop")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--filter", action="store_true", help="train only on pairs whose "
                        "emotional answer judge A (embedded-a) confirms")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    import emosteer

    model, tok = emosteer.load_model("default")
    gens = load_generations(OUT / "generations.safetensors")
    band = None if args.band == "all" else "auto" if args.band == "auto" else \
        tuple(int(x) for x in args.band.split("-"))
    for emotion in args.emotion:
        mine = [g for g in gens if g.emotion == emotion]
        for lr in args.lr or [0.02]:
            for kl in args.kl or [1.0]:
                train = TrainConfig(steps=args.steps, lr=lr, kl_weight=kl, beta=args.beta,
                                    pairs_per_step=args.pairs, max_answer_tokens=args.tokens,
                                    init=args.init, bidirectional=not args.unidirectional)
                cfg = replace(ExtractConfig(limit=args.limit), emotions=(emotion,),
                              method="trained", train=train, band=band,
                              **({"filter": "judge", "judge": "embedded-a"}
                                 if args.filter else {}))
                result = extract(model, tok, cfg, progress=False, generations=mine)
                t = result.details[emotion]["train"]
                k = max(1, args.steps // 10)
                name = setting_name(train, args.band) + ("-filtered" if args.filter else "")
                vec = result.vectors[emotion]
                vec.save(OUT / "train" / f"{emotion}-{name}.safetensors")
                row = {"emotion": emotion, "setting": name, "s_per_step": t["seconds"] / args.steps,
                       "loss": [statistics.fmean(t["losses"][:k]),
                                statistics.fmean(t["losses"][-k:])],
                       "margin": [statistics.fmean(t["margins"][:k]),
                                  statistics.fmean(t["margins"][-k:])],
                       "kl": [statistics.fmean(t["kls"][:k]), statistics.fmean(t["kls"][-k:])],
                       "layers": f"{vec.layers[0]}-{vec.layers[-1]}",
                       "norm": sum(float(v.norm()) ** 2 for v in vec.directions.values()) ** 0.5}
                print(json.dumps(row), flush=True)
                log = OUT / "train" / "log.jsonl"
                old = log.read_text() if log.is_file() else ""
                write_text(log, old + json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
