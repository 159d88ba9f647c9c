"""Writes train.csv and validation.csv: short sentences on five topics (sports, food, weather, technology, music).

    python examples/data/topics/generate.py

Each sentence puts one or two topic words into a topic-neutral frame ("My neighbour would not stop talking about
{}."). The validation sentences use topic words that never occur in training, so a bag-of-words model cannot
recognise them, while a pretrained language model knows what the new words are about.
"""

import csv
import random
from pathlib import Path

TOPICS = {
    "sports": ["football", "the marathon", "a tennis match", "the referee", "basketball", "the goalkeeper",
               "the swimming race", "a penalty kick", "the cycling tour", "the boxing bout", "the hockey game",
               "the Olympic sprinter", "a home run", "the rugby scrum", "the ski jump", "the volleyball team",
               "the golf tournament", "a slam dunk", "the league table", "the wrestling champion",
               "the cricket bat", "a hat trick", "the relay runners", "the fencing duel", "the stadium crowd",
               "the javelin throw", "the halftime score", "a badminton rally", "the striker", "the world cup"],
    "food": ["the lasagne", "fresh bread", "a bowl of soup", "the chocolate cake", "grilled salmon",
             "the pasta sauce", "a ripe mango", "the cheese platter", "roasted vegetables", "the pancakes",
             "a spicy curry", "the sushi rolls", "garlic butter", "the apple pie", "a steak dinner",
             "the omelette", "the dumplings", "fried rice", "the salad dressing", "a cup of yoghurt",
             "the burrito", "the noodle broth", "a slice of pizza", "the lemon tart", "baked potatoes",
             "the croissants", "a plate of tacos", "the risotto", "the barbecue ribs", "a bag of cherries"],
    "weather": ["the thunderstorm", "heavy rain", "the snowfall", "a heat wave", "the fog", "strong winds",
                "the hailstorm", "the forecast of sleet", "a drought", "the hurricane", "freezing temperatures",
                "the drizzle", "a blizzard", "the humidity", "the rainbow after the shower", "the frost",
                "a tornado warning", "the monsoon", "the clouds rolling in", "a sunny spell", "the gale",
                "the flood warning", "icy roads", "the muggy air", "a cold front", "the lightning",
                "the overcast sky", "a mild breeze", "the typhoon", "the record temperature"],
    "technology": ["the new smartphone", "a software update", "the laptop battery", "the wifi router",
                   "the cloud server", "a computer virus", "the graphics card", "the programming language",
                   "the database crash", "a robot vacuum", "the search engine", "the tablet screen",
                   "the operating system", "a password leak", "the microchip", "the smartwatch",
                   "the web browser", "a 3D printer", "the encryption key", "the app store",
                   "the keyboard shortcut", "the data centre", "a firmware bug", "the bluetooth speaker",
                   "the machine learning model", "the hard drive", "a video codec", "the USB cable",
                   "the compiler error", "the electric car software"],
    "music": ["the guitar solo", "the orchestra", "a jazz concert", "the new album", "the drummer",
              "the opera singer", "a piano sonata", "the choir", "the rap lyrics", "the violin",
              "the music festival", "a catchy chorus", "the symphony", "the bass line", "the pop single",
              "the saxophone", "a folk ballad", "the DJ set", "the string quartet", "the rock band",
              "the trumpet", "a love song", "the conductor", "the vinyl record", "the cello",
              "the hip hop beat", "the karaoke night", "a drum kit", "the flute melody", "the chart topper"],
}

FRAMES = [
    "I keep thinking about {}.",
    "My neighbour would not stop talking about {}.",
    "Everyone at work was discussing {} today.",
    "Have you heard the news about {}?",
    "There was a long story in the paper about {}.",
    "My sister sent me a message about {}.",
    "We argued for an hour about {}.",
    "Honestly, {} surprised me.",
    "Nobody expected {} to be like that.",
    "I wrote a short note about {}.",
    "The kids asked me about {} and {}.",
    "Yesterday it was all about {} and {}.",
    "I cannot decide what I think of {} or {}.",
    "Our group chat is full of {} and {}.",
]

TRAIN_WORDS = 18  # per topic: the first 18 words make the training sentences, the other 12 the validation ones


def sentences(words: dict[str, list[str]], count: int, rng: random.Random) -> list[tuple[str, str]]:
    rows = []
    for i in range(count):
        topic = list(words)[i % len(words)]
        frame = rng.choice(FRAMES)
        picks = rng.sample(words[topic], frame.count("{}"))
        text = frame.format(*picks)
        rows.append((text[0].upper() + text[1:], topic))
    rng.shuffle(rows)
    return rows


def main() -> None:
    rng = random.Random(0)
    folder = Path(__file__).parent
    train = sentences({t: w[:TRAIN_WORDS] for t, w in TOPICS.items()}, 300, rng)
    validation = sentences({t: w[TRAIN_WORDS:] for t, w in TOPICS.items()}, 150, rng)
    for name, rows in (("train.csv", train), ("validation.csv", validation)):
        with open(folder / name, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(rows)


if __name__ == "__main__":
    main()
