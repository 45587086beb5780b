"""Write the bundled smoke sample: invented dialogues and invented labelled seeker/response pairs.

Nothing here is copied from EmpatheticDialogues or EPITOME; every sentence was written for this sample.
It only has the datasets' shape, in both EmpatheticDialogues layouts (rebuilt ``{split}.jsonl.gz`` and
the official ``{split}.csv`` with ``_comma_`` and, in valid/test, a ragged 9th field of inline candidates)
and the three EPITOME csv files (every level of every mechanism, one pair repeated as in the real files).
Reproducible byte for byte (gzip mtime 0, fixed seed). The files are not committed: ``ensure()`` writes
them once into a cache folder (``$EMPRL_CACHE_DIR``, else ``~/.cache/emprl``) named after a hash of this
module, so an edited generator gives a fresh sample; ``python -m emprl.smoke_sample DIR`` writes them anywhere.
Numbers computed on this sample are not meaningful.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import sys
import io
import json
import random
from itertools import product
from pathlib import Path

from emprl.checkpoint import atomic_dir

N_DIALOGUES = {"train": 40, "valid": 12, "test": 12}
TURNS = (2, 3, 4, 4, 4, 4, 5, 5, 6, 6)

# emotion -> situations (situation, opening utterance), listener replies, speaker follow-ups
BANK = {
    "proud": {
        "situations": [
            ("My daughter finished her first piano recital without a single mistake.",
             "My daughter played her first piano recital today, and she did not miss a note!"),
            ("I ran a half marathon after training for six months.",
             "I finally ran a half marathon last weekend. Six months of training paid off."),
            ("I fixed the leaking sink myself instead of calling a plumber.",
             "I fixed our leaking sink all by myself, no plumber needed."),
        ],
        "listener": [
            "That is wonderful! How long has she been practicing?",
            "Congratulations, that takes real dedication.",
            "Wow, you must be thrilled. What was the hardest part?",
            "That's great news, you should celebrate tonight.",
            "Nice work! Did anyone come to cheer you on?",
        ],
        "followups": [
            "Thank you, it was a long road but worth it.",
            "Almost a year now, and she practices every evening.",
            "My whole family came, which made it even better.",
            "The last mile was brutal, but I kept going.",
        ],
    },
    "afraid": {
        "situations": [
            ("I heard footsteps downstairs late at night while I was home alone.",
             "Last night I heard footsteps downstairs, and I was home alone."),
            ("The plane I was on hit heavy turbulence over the mountains.",
             "My flight hit terrible turbulence yesterday, and I thought we were going down."),
            ("A large dog chased me while I was jogging in the park.",
             "A huge dog chased me in the park this morning. I still feel shaky."),
        ],
        "listener": [
            "Oh no, that sounds terrifying. Are you okay?",
            "That would scare me too. What did you do?",
            "I'm glad you're safe. Did you call anyone?",
            "How frightening! Has it happened before?",
            "That must have been awful. Did you get any sleep?",
        ],
        "followups": [
            "It turned out to be my cat knocking things over, but I was shaking.",
            "I held my breath the whole time and gripped the seat.",
            "I'm fine now, just a little jumpy.",
            "I called my brother, and he stayed on the phone with me.",
        ],
    },
    "sad": {
        "situations": [
            ("My old dog passed away after fourteen years with our family.",
             "We had to say goodbye to our dog this week. He was fourteen."),
            ("My best friend moved across the country for a new job.",
             "My best friend just moved across the country, and the house feels empty."),
            ("I found out my favorite bookstore is closing for good.",
             "The little bookstore I've visited since childhood is closing."),
        ],
        "listener": [
            "I'm so sorry for your loss. He sounds like he was a great companion.",
            "That's really hard. Do you plan to keep in touch?",
            "Oh, that's sad news. What will you miss most?",
            "I'm sorry, that must hurt a lot.",
            "That's tough. Is there anything that is helping you cope?",
        ],
        "followups": [
            "Thanks, we are still getting used to the quiet.",
            "We will call every Sunday, but it is not the same.",
            "I will miss the smell of the old shelves, honestly.",
            "Looking at old photos helps a little.",
        ],
    },
    "grateful": {
        "situations": [
            ("A stranger paid for my groceries when my card was declined.",
             "My card was declined at the store, and a stranger paid for my groceries."),
            ("My neighbor shoveled my driveway while I was sick.",
             "I was sick all week, and my neighbor shoveled my driveway every morning."),
            ("My coworker covered my shift so I could see my son's game.",
             "A coworker covered my shift so I could watch my son's game."),
        ],
        "listener": [
            "That's so kind! Did you get a chance to thank them?",
            "What a nice thing to do. People can be wonderful.",
            "That must have made your day. How did you feel?",
            "Good neighbors are priceless. Are you feeling better now?",
            "That's lovely, I hope you can return the favor.",
        ],
        "followups": [
            "I thanked them twice, and I still want to do more.",
            "I'm feeling much better, thank you.",
            "I was close to tears, honestly.",
            "I'm baking them a cake this weekend.",
        ],
    },
    "anxious": {
        "situations": [
            ("I have a job interview tomorrow for a position I really want.",
             "I have an interview tomorrow for my dream job, and I can't stop worrying."),
            ("I'm waiting for the results of a medical test.",
             "I'm still waiting on my test results from the doctor, and it's making me anxious."),
            ("I have to give a speech at my sister's wedding.",
             "I'm giving the speech at my sister's wedding on Saturday and I'm nervous."),
        ],
        "listener": [
            "That's a lot of pressure. How are you preparing?",
            "Waiting is the worst part. When will you hear back?",
            "You'll do great, I'm sure. Have you practiced it out loud?",
            "I understand the nerves. Is there anything that calms you down?",
            "Good luck! What are you most worried about?",
        ],
        "followups": [
            "I practiced in front of the mirror, which helped a bit.",
            "They said the results should come on Friday.",
            "Mostly I'm afraid my mind will go blank.",
            "A long walk usually calms me down.",
        ],
    },
    "excited": {
        "situations": [
            ("We booked a trip to see the northern lights next month.",
             "We just booked a trip to see the northern lights next month!"),
            ("My favorite band announced a concert in my town.",
             "My favorite band is finally playing a show in my town, and I got tickets!"),
            ("I'm adopting a kitten this weekend.",
             "I'm bringing home a kitten this weekend, and I can hardly wait."),
        ],
        "listener": [
            "That sounds amazing! Where are you going?",
            "How exciting! Have you seen them live before?",
            "A kitten, how fun! Have you picked a name?",
            "Lucky you, that will be unforgettable.",
            "I'd be counting the days too. What are you most looking forward to?",
        ],
        "followups": [
            "We are going to the far north, and I've packed already.",
            "Never live, so this is a first for me.",
            "We are thinking of calling her Pepper.",
            "Honestly, just being there in person.",
        ],
    },
    "lonely": {
        "situations": [
            ("I moved to a new city and don't know anyone yet.",
             "I moved to a new city last month, and I don't know anyone here."),
            ("My roommates went home for the holidays and I stayed behind.",
             "Everyone went home for the holidays, and I'm alone in the apartment."),
            ("I eat lunch by myself at my new job every day.",
             "At my new job I end up eating lunch alone every day."),
        ],
        "listener": [
            "That can feel really isolating. Have you found any groups to join?",
            "I'm sorry you're alone right now. Do you have plans for the holidays?",
            "Starting somewhere new is hard. Have you talked to any coworkers?",
            "I know that feeling. What do you enjoy doing in your free time?",
            "That sounds hard, but it does get better with time.",
        ],
        "followups": [
            "I might try a running club on weekends.",
            "I'll probably video call my parents.",
            "One coworker seems friendly, so maybe I'll ask her.",
            "I like cooking, so maybe a cooking class.",
        ],
    },
    "angry": {
        "situations": [
            ("Someone scratched my car in the parking lot and drove away.",
             "Someone scratched my car in the parking lot and just drove off!"),
            ("My landlord kept my deposit without any reason.",
             "My landlord is keeping my whole deposit, and he won't say why."),
            ("A coworker took credit for my project in a meeting.",
             "A coworker presented my project as his own in today's meeting."),
        ],
        "listener": [
            "That's infuriating. Did anyone see it happen?",
            "That's not fair at all. Can you take it to small claims?",
            "I would be furious too. Did you talk to your boss?",
            "What a rude thing to do. Is the damage bad?",
            "Ugh, that's so frustrating. What are you going to do?",
        ],
        "followups": [
            "No one saw anything, and there were no cameras.",
            "I'm going to send him a letter first.",
            "I spoke to my manager, and she believed me.",
            "It's a long scratch, so the repair won't be cheap.",
        ],
    },
    "surprised": {
        "situations": [
            ("My friends threw me a surprise party for my birthday.",
             "My friends threw me a surprise party last night, and I had no idea!"),
            ("I found twenty dollars in an old winter coat.",
             "I just found twenty dollars in the pocket of my old winter coat."),
            ("My quiet neighbor turned out to be a famous painter.",
             "I learned today that my quiet neighbor is a well known painter."),
        ],
        "listener": [
            "That's so fun! Did you really not suspect anything?",
            "Nice find! What will you spend it on?",
            "No way, that's such a surprise. Have you seen his work?",
            "I love surprises like that. Who planned it?",
            "Wow, what a lucky day.",
        ],
        "followups": [
            "Not a clue, they hid it really well.",
            "Probably coffee and a new book.",
            "I looked him up, and his paintings are beautiful.",
            "My sister planned the whole thing.",
        ],
    },
    "nostalgic": {
        "situations": [
            ("I found a box of letters from my grandmother.",
             "I found a box of old letters my grandmother wrote to me."),
            ("I drove past my childhood home for the first time in years.",
             "I drove past the house I grew up in today. It looks so different."),
            ("An old song from high school came on the radio.",
             "A song from my high school days came on the radio, and I was smiling all day."),
        ],
        "listener": [
            "That's so special. What did the letters say?",
            "Places change so much. Did you stop to look?",
            "Music brings back memories like nothing else. What song was it?",
            "That sounds bittersweet. Do you miss those days?",
            "How lovely. Do you still have things from back then?",
        ],
        "followups": [
            "Mostly stories about her garden and her dog.",
            "I parked for a minute and just looked at the old tree.",
            "It was a silly pop song, but I loved it back then.",
            "I do miss how simple everything felt.",
        ],
    },
}

SEEKER_POSTS = [
    "I failed my driving test again and I feel like a complete failure.",
    "My parents are getting divorced and I don't know who to talk to.",
    "I haven't left my room in three days, and I can't find the energy to do anything.",
    "Work has been so stressful that I can't sleep at night anymore.",
    "My best friend stopped answering my messages and I don't know what I did wrong.",
    "I keep comparing myself to everyone online and I always come out worse.",
    "I got rejected from every college I applied to.",
    "Everyone at school seems to have friends except me.",
    "I lost my job today and I'm scared about paying rent.",
    "I feel like nobody would notice if I just disappeared for a while.",
    "My anxiety is so bad that I canceled plans with friends again.",
    "I've been crying every night since my breakup.",
    "I'm exhausted from taking care of my sick mother by myself.",
    "I moved for a new job and I feel completely alone here.",
    "I can't focus on anything and my grades are falling apart.",
    "I keep thinking about a mistake I made years ago and it won't stop.",
    "My family keeps telling me I'm lazy, and maybe they're right.",
    "I had a panic attack in the middle of class today.",
    "My dog died last week and the house feels empty.",
    "I don't enjoy the things I used to love anymore.",
    "I've been drinking more than I should to fall asleep.",
    "My partner says I'm too sensitive, and now I doubt every feeling I have.",
    "I have no motivation to get out of bed in the mornings.",
    "I feel like a burden on everyone around me.",
    "My therapist moved away and I don't want to start over with someone new.",
    "I got into an argument with my brother and we haven't spoken since.",
    "Every time I try to make friends I say something awkward.",
    "I'm behind on every deadline and I don't know where to start.",
    "I feel numb, like I'm watching my life from the outside.",
    "I relapsed after six months and I'm so ashamed.",
]
# mechanism -> level -> phrases (level 0: no phrase)
PHRASES = {
    "emotional_reactions": {
        1: ["Oh no.", "That sounds rough.", "Aw, that's hard.", "Ugh, sorry."],
        2: ["My heart really goes out to you, that sounds so painful.",
            "I'm so sorry, I feel sad just reading this.",
            "That must be terrifying, and I'm really sorry you're going through it.",
            "I feel for you so much right now."],
    },
    "interpretations": {
        1: ["I understand how you feel.", "I get what you mean.", "I know what you mean."],
        2: ["I went through something very similar last year, and the loneliness was the worst part.",
            "It sounds like you feel invisible to the people closest to you.",
            "When my father got sick I also felt like I was failing everyone at once.",
            "It seems like you are carrying all of this on your own and it's wearing you down."],
    },
    "explorations": {
        1: ["What happened?", "Want to talk about it?", "How are you doing now?"],
        2: ["What do you think made this week so much harder than usual?",
            "How did you feel when they stopped answering your messages?",
            "Have you been able to tell anyone close to you how overwhelmed you are?",
            "What usually helps you get through a night like this?"],
    },
}
NEUTRAL = [
    "Try to get some sleep tonight.",
    "Drink some water and take a walk outside.",
    "There are hotlines you can call at any hour.",
    "Make a list and do one small thing at a time.",
    "Maybe write it down in a journal.",
]
MECHANISM_FILES = {
    "emotional_reactions": "emotional-reactions-reddit.csv",
    "interpretations": "interpretations-reddit.csv",
    "explorations": "explorations-reddit.csv",
}


def make_dialogues(rng: random.Random) -> dict[str, list[dict]]:
    emotions = sorted(BANK)
    splits: dict[str, list[dict]] = {}
    k = 0
    for split, n in N_DIALOGUES.items():
        splits[split] = []
        for i in range(n):
            emotion = emotions[k % len(emotions)]
            bank = BANK[emotion]
            situation, opener = bank["situations"][(k // len(emotions)) % len(bank["situations"])]
            listener = rng.sample(bank["listener"], 3)
            followups = rng.sample(bank["followups"], 2)
            turns = [opener, listener[0], followups[0], listener[1], followups[1], listener[2]]
            splits[split].append(
                {"conv_id": f"sample:{split}_conv:{i}", "emotion": emotion, "situation": situation,
                 "turns": turns[: rng.choice(TURNS)]}
            )
            k += 1
    return splits


def write_jsonl_gz(path: Path, dialogues: list[dict]) -> None:
    text = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dialogues)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
        f.write(text.encode("utf-8"))


def write_official_csv(path: Path, dialogues: list[dict], inline_candidates: bool, rng: random.Random) -> None:
    """Raw release style: no quoting, commas as _comma_; valid/test listener rows get a 9th field."""

    def esc(s: str) -> str:
        assert "\n" not in s
        return s.replace(",", "_comma_")

    lines = ["conv_id,utterance_idx,context,prompt,speaker_idx,utterance,selfeval,tags"]
    for n, d in enumerate(dialogues):
        workers = (100 + 2 * n, 101 + 2 * n)
        for i, u in enumerate(d["turns"]):
            fields = [d["conv_id"], str(i + 1), d["emotion"], esc(d["situation"]), str(workers[i % 2]), esc(u),
                      "5|5|5_4|4|5", ""]
            if inline_candidates and i % 2 == 1:
                others = rng.sample([c for c in BANK[d["emotion"]]["listener"] if c != u], 2)
                fields.append("|".join(esc(c).replace("|", "_pipe_") for c in [u, *others]))
            lines.append(",".join(fields))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_epitome(rng: random.Random) -> list[dict]:
    combos = list(product(range(3), repeat=3))
    levels = combos + combos + rng.sample(combos, 2 * len(SEEKER_POSTS) - 2 * len(combos))
    rng.shuffle(levels)
    pairs = []
    for j, lv in enumerate(levels):
        s = j // 2
        parts, rationale = [], {}
        for mechanism, level in zip(MECHANISM_FILES, lv):
            if level:
                phrase = rng.choice(PHRASES[mechanism][level])
                parts.append(phrase)
                rationale[mechanism] = phrase
        if not parts or rng.random() < 0.3:
            parts.append(rng.choice(NEUTRAL))
        pairs.append({"sp_id": f"sp{s:03d}", "rp_id": f"rp{j:03d}", "seeker_post": SEEKER_POSTS[s],
                      "response_post": " ".join(parts), "levels": dict(zip(MECHANISM_FILES, lv)),
                      "rationales": rationale})
    return pairs


def write_epitome(folder: Path, pairs: list[dict]) -> None:
    for mechanism, name in MECHANISM_FILES.items():
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["sp_id", "rp_id", "seeker_post", "response_post", "level", "rationales"])
        rows = [[p["sp_id"], p["rp_id"], p["seeker_post"], p["response_post"], p["levels"][mechanism],
                 p["rationales"].get(mechanism, "")] for p in pairs]
        w.writerows(rows + rows[:1])  # one identical repeated pair, as in the real files
        (folder / name).write_text(buf.getvalue(), encoding="utf-8")


def write(out: Path) -> Path:
    """Write both EmpatheticDialogues layouts and the three EPITOME files under ``out``."""
    rng = random.Random(0)
    ed, ep = Path(out) / "empatheticdialogues", Path(out) / "epitome"
    ed.mkdir(parents=True, exist_ok=True)
    ep.mkdir(parents=True, exist_ok=True)
    for split, dialogues in make_dialogues(rng).items():
        write_jsonl_gz(ed / f"{split}.jsonl.gz", dialogues)
        write_official_csv(ed / f"{split}.csv", dialogues, inline_candidates=split != "train", rng=rng)
    write_epitome(ep, make_epitome(rng))
    return Path(out)


def ensure(cache_root: str | os.PathLike | None = None) -> Path:
    """The sample's folder, written atomically on first use (a temp folder renamed into place)."""
    root = Path(cache_root or os.environ.get("EMPRL_CACHE_DIR") or Path.home() / ".cache" / "emprl")
    version = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    target = root / f"smoke-sample-{version}"
    if (target / "epitome" / MECHANISM_FILES["explorations"]).exists():
        return target
    try:
        with atomic_dir(target, replace=False) as tmp:  # a concurrent process's copy is identical: keep it
            write(tmp)
    except OSError:  # that process renamed its copy in between
        if not (target / "epitome" / MECHANISM_FILES["explorations"]).exists():
            raise
    return target


if __name__ == "__main__":
    print(f"wrote the smoke sample under {write(Path(sys.argv[1]) if len(sys.argv) > 1 else ensure())}")
