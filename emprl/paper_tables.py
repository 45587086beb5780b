"""The numbers the EmpRL paper reports (Ma et al., TAFFC 2025), typed in once from the paper text.

Used as reference blocks beside our measured numbers (notebooks 02, 05, 06, 07). Nothing here is
computed; nothing computed may be written here.
"""

from __future__ import annotations

import pandas as pd

# Table I: empathy identifiers on the validation set of Mental Health Subreddits (EPITOME).
TABLE_I = {
    "columns": ("Accuracy (%)", "Weighted-F1 (%)"),
    "rows": {
        "emotional_reactions": (87.68, 87.70),
        "interpretations": (85.25, 83.79),
        "explorations": (94.98, 94.80),
    },
}

# Table II: automatic evaluation on the EmpatheticDialogues test set. None = not reported ("-").
TABLE_II = {
    "columns": ("PPL", "Dist-1", "Dist-2", "Emp-F1 (%)"),
    "rows": {
        "MoEL": (36.97, 0.44, 2.16, 59.31),
        "MIME": (37.36, 0.47, 2.02, 59.69),
        "EmpDG": (37.26, 0.49, 2.23, 58.54),
        "KEMP": (36.39, 0.61, 2.65, 54.29),
        "CEM": (36.12, 0.66, 2.99, 63.32),
        "SEEK": (37.25, 0.72, 3.11, 63.08),
        "CASE": (35.59, 0.78, 3.98, 64.72),
        "ChatGPT": (None, 4.22, 23.99, 64.79),
        "EmpRL": (12.87, 4.55, 27.71, 66.40),
    },
}

# Table III: human ratings (1-5, mean of three raters, 100 sampled contexts).
TABLE_III = {
    "columns": ("Empathy", "Relevance", "Fluency"),
    "rows": {
        "MoEL": (1.94, 1.89, 3.21),
        "MIME": (2.15, 2.18, 3.24),
        "EmpDG": (2.04, 2.11, 3.26),
        "KEMP": (1.97, 1.92, 3.20),
        "CEM": (2.03, 2.01, 3.19),
        "SEEK": (2.01, 1.98, 3.12),
        "CASE": (2.23, 2.21, 3.33),
        "ChatGPT": (4.25, 4.32, 4.52),
        "EmpRL": (3.49, 3.47, 3.90),
    },
}

# Table IV: human A/B test, EmpRL (model A) against each baseline.
TABLE_IV = {
    "columns": ("Win (%)", "Lose (%)", "Tie (%)"),
    "rows": {
        "EmpRL vs MoEL": (68.00, 14.00, 18.00),
        "EmpRL vs MIME": (63.00, 19.00, 18.00),
        "EmpRL vs EmpDG": (64.00, 17.00, 19.00),
        "EmpRL vs KEMP": (62.00, 20.00, 18.00),
        "EmpRL vs CEM": (66.00, 21.00, 13.00),
        "EmpRL vs SEEK": (63.00, 15.00, 22.00),
        "EmpRL vs CASE": (58.00, 20.00, 22.00),
        "EmpRL vs ChatGPT": (12.00, 40.00, 48.00),
    },
}

# Table V: ablation study (w/o KL penalty trained for 1,600 PPO steps only, footnote 4).
TABLE_V = {
    "columns": ("PPL", "Dist-1", "Dist-2", "Emp-F1 (%)"),
    "rows": {
        "EmpRL": (12.87, 4.55, 27.71, 66.40),
        "w/o KL Penalty": (28.71, 1.64, 7.08, 58.15),
        "w/o Empathy Reward": (12.79, 4.26, 26.10, 64.99),
        "w/o RL": (11.99, 4.25, 26.09, 65.90),
        "w/o RL, Prefix-tuning": (12.17, 4.01, 24.90, 65.77),
    },
}

# Table VI: the four case-study contexts. ``context`` is the utterance sequence (Speaker first,
# roles alternating) as emprl.data.DialogueExample.context; ``responses`` are the paper's.
TABLE_VI = [
    {
        "case": 1,
        "emotion": "content",
        "context": ("I am happy with where we are now living.",),
        "responses": {
            "MoEL": "That is awesome. I am glad you are happy for you.",
            "MIME": "That is great. What is the name?",
            "EmpDG": "That is great to hear. What is your favorite thing?",
            "KEMP": "That is great to hear! What are you going to do?",
            "CEM": "That is great, I am glad you are doing well.",
            "SEEK": "That is too bad. What are you going to do with them.",
            "CASE": "I am glad to hear that.",
            "ChatGPT": "That's wonderful to hear. What do you like most about your new home?",
            "EmpRL": "That's awesome! Where are you living?",
        },
        "gold": "Where are you living at?",
    },
    {
        "case": 2,
        "emotion": "proud",
        "context": ("Running my first (and maybe only!) marathon felt like *such* a huge accomplishment!",),
        "responses": {
            "MoEL": "That is awesome! I am glad you are so proud of your future!",
            "MIME": "That is awesome! What is the name of the week?",
            "EmpDG": "That is great! I am sure you will do great!",
            "KEMP": "Wow, that is a long time.",
            "CEM": "I am sure you will do great!",
            "SEEK": "That is so true.",
            "CASE": "Wow, that is a huge accomplishment!",
            "ChatGPT": "Congratulations! Running a marathon is no easy feat, you should be proud of yourself.",
            "EmpRL": "Oh wow! I bet you really enjoyed it afterwards.",
        },
        "gold": "Wow, that is an amazing accomplishment! Congratulations! You gotta be feeling like you're on top of the world after that!",
    },
    {
        "case": 3,
        "emotion": "content",
        "context": (
            "I just went camping and build the warmest fire.",
            "I love a warm fire outside while camping! Sounds like a great time.",
            "Yeah, I ended up falling asleep to the dying fire. I felt very safe and secure.",
        ),
        "responses": {
            "MoEL": "I am glad you are okay!",
            "MIME": "I am glad you are okay.",
            "EmpDG": "That is great! I am glad you were able to have a great time!",
            "KEMP": "I am glad you are okay. I am sure you are able to get it out.",
            "CEM": "I am glad you were able to go back and then!",
            "SEEK": "That is so true.",
            "CASE": "Oh no! I am so sorry to hear that.",
            "ChatGPT": "That sounds like a peaceful and relaxing camping trip. Falling asleep to a dying fire is always a comforting feeling.",
            "EmpRL": "Oh wow, you must have really enjoyed that feeling.",
        },
        "gold": "Yes that sounds like a wonderful way to sleep.",
    },
    {
        "case": 4,
        "emotion": "prepared",
        "context": (
            "I have a big exam for college coming up, I have been studying day and night.",
            "What's the exam on?",
            "It is for my molecular biology class, I feel pretty good that I am going to Ace it.",
        ),
        "responses": {
            "MoEL": "That is great! I hope you do well.",
            "MIME": "That is great! I am sure you will be fine.",
            "EmpDG": "That is great! I am sure you will do great!",
            "KEMP": "I am sure you will do great!",
            "CEM": "That is great! I hope you do well.",
            "SEEK": "That is a good feeling.",
            "CASE": "I am sure you will do great!",
            "ChatGPT": "That's impressive dedication. Best of luck on the exam, I'm sure you'll do great!",
            "EmpRL": "I hope you do, that is a huge achievement.",
        },
        "gold": "I wish you good luck!",
    },
]


def as_frame(table: dict) -> pd.DataFrame:
    """One of TABLE_I..TABLE_V as a DataFrame (None shown as NaN, i.e. "-" in the paper)."""
    frame = pd.DataFrame.from_dict(table["rows"], orient="index", columns=list(table["columns"]))
    frame.index.name = "Model"
    return frame


def reported(system: str, columns: tuple[str, ...]) -> tuple:
    """The paper's values of ``columns`` for ``system`` (a row of Table II, else of the ablation Table V)."""
    for table in (TABLE_II, TABLE_V):
        if system in table["rows"]:
            row = dict(zip(table["columns"], table["rows"][system]))
            missing = [c for c in columns if c not in row]
            if missing:
                raise KeyError(f"paper tables have no column(s) {missing}; columns: {list(row)}")
            return tuple(row[c] for c in columns)
    raise KeyError(f"{system!r} is in neither Table II nor Table V")
