"""Run PPO twice from the same trained generator, once per KL estimator of Eq. 6, and compare.

    python experiments/ppo_kl_estimators.py --profile offline [--out outputs/offline]

Needs notebooks 02 and 03 (identifiers, generator) in the output folder. "sampled" is the
sampled-token estimate log pi(y_t) - log rho(y_t) (paper, trl); "full" the exact KL over the
vocabulary. Runs go to <out>/experiments/kl_<estimator>/; a finished run is reused.
"""

from __future__ import annotations

import argparse
import dataclasses

import pandas as pd

import emprl
from emprl import data
from emprl.models import generator, scoring
from emprl.rl import ppo_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="offline")
    parser.add_argument("--out", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--window", type=int, default=20, help="steps averaged at the start and the end")
    args = parser.parse_args()
    run = emprl.setup(args.profile, data_dir=args.data_dir, output_dir=args.out)
    P, out = run.profile, run.out
    scorer = scoring.EmpathyScorer.load(run.paths.identifiers, device=run.device, batch_size=2 * P.identifiers.batch_size)
    train = data.visited_subset(data.load_split(P, "train", args.data_dir), P.ppo.steps, P.ppo.batch_size, P.seed)
    gold = scoring.gold_labels(scorer, train, out / "cache")
    rows = {}
    for estimator in ("sampled", "full"):
        policy, tokenizer = generator.load_generator(run.paths.generator("prefix"))
        with run.autocast():
            res = ppo_train.train_ppo(policy.to(run.device), None, tokenizer, scorer, train, gold,
                                dataclasses.replace(P.ppo, kl_estimator=estimator), P.generator,
                                out / "experiments" / f"kl_{estimator}", seed=P.seed, variant="emprl",
                                max_context_tokens=P.data.max_context_tokens, progress=True)
        log = pd.read_csv(res["log_path"])
        cols = ["emp_reward_mean", "reward_mean", "kl", "entropy", "response_len"]
        rows[(estimator, "first")] = log.head(args.window)[cols].mean()
        rows[(estimator, "last")] = log.tail(args.window)[cols].mean()
    print(f"profile {P.name}, {P.ppo.steps} steps; means over the first/last {args.window} steps")
    print(pd.DataFrame(rows).T.round(4).to_string())


if __name__ == "__main__":
    main()
