"""Generate ``router_tasks.jsonl``: the labelled user turns ``modelyard router train`` learns from.

    python -m modelyard.datasets._make_router_tasks            # rewrites the file beside this one
    python -m modelyard.datasets._make_router_tasks --check    # exit 1 if the file is not what it makes

Seeded (``random.Random(SEED)``), so the output is byte-identical on every run. Each line is
``{"text": ..., "task": ..., "hard": true?}``; ``text`` is what ``routing.tasks.user_text`` would
return (the user's words only). Four tasks, templates × slots, 340 distinct items each:

- ``code``: write/fix/explain/review code, with and without code in the text — pasted snippets and
  tracebacks, but also bug reports in plain words ("the app crashes when I click save").
- ``chat``: questions, advice, creative writing, small talk, trivia.
- ``summarize``: a passage (article, meeting notes, email, reviews) with a request to shorten it,
  phrased many ways, the request before or after the passage.
- ``classify``: pick a label for a text: sentiment, spam, topic, intent, urgency, language.

Hard cases (``"hard": true``) are the ones a keyword would get wrong: the snake and the island
("python", "java") → chat; a poem about recursion → chat; a plain-words bug report → code; a support
ticket to categorise that describes a crash → classify; "what are the main points of this" with no
"summarize" → summarize; agent boilerplate (environment details, a pasted persona) around the
request, which must not drive the label. "Summarize this stack trace" is labelled **code** (the
project's call: the coder reads traces better; the built-in rules agree — see
docs/design/task-routing.md).
"""

# ruff: noqa: E501 - template banks: one phrase list per line reads better than wrapped literals
from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelyard.datasets import generator_main

SEED = 20261211
PER_TASK = 340
OUT = Path(__file__).with_name("router_tasks.jsonl")

# --- shared slots -----------------------------------------------------------------------------------
LANGS = ["Python", "JavaScript", "TypeScript", "Go", "Rust", "Java", "C++", "C#", "Ruby", "PHP", "Kotlin", "Bash"]
FUNCS = ["reverses a linked list", "parses an ISO 8601 date", "deduplicates a list while keeping order",
         "checks whether a string is a palindrome", "merges two sorted arrays", "computes a moving average",
         "flattens a nested dictionary", "retries an HTTP request with exponential backoff",
         "validates an email address", "counts word frequencies in a file", "finds the longest common prefix",
         "converts Roman numerals to integers", "batches an iterable into chunks of n", "debounces a callback",
         "reads a CSV file and sums a column", "implements an LRU cache", "walks a directory tree recursively",
         "rate-limits calls to a function", "serialises a tree to JSON", "computes the Levenshtein distance"]
APPS = ["the app", "our web app", "the Android build", "the iOS app", "the dashboard", "my side project",
        "the desktop client", "the checkout page", "our internal tool", "the admin panel", "the mobile app"]
ACTIONS = ["click save", "upload a file bigger than 10 MB", "log in with Google", "open the settings screen",
           "switch to dark mode", "resize the window", "submit the form twice", "scroll to the bottom of the list",
           "rotate the phone", "press back during checkout", "paste an emoji into the name field"]
SYMPTOMS = ["crashes", "freezes for about ten seconds", "shows a blank white screen", "logs me out",
            "spins forever", "duplicates the last entry", "loses everything I typed", "gets really slow",
            "throws an error popup", "closes without any message"]
TOPICS_CHAT = ["the best way to learn to cook", "how to ask for a raise", "why the sky is blue",
               "what to pack for a week in Iceland", "how to keep houseplants alive", "the history of the Roman Empire",
               "whether to rent or buy a flat", "how to sleep better", "good board games for four players",
               "how vaccines train the immune system", "tips for running a first marathon", "how tides work",
               "what to say at a friend's wedding", "how to make sourdough starter", "the rules of cricket",
               "how to deal with a noisy neighbour", "why cats purr", "how black holes form", "learning a new language as an adult",
               "how to budget on a low income"]
NAMES = ["Maya", "Tom", "Priya", "Lukas", "Aiko", "Carlos", "Fatima", "Jonas", "Elena", "Sam"]

SENTENCES = {
    "news": ["The city council approved a new budget on Tuesday after weeks of debate.",
             "Funding for public transport rises by twelve percent, while road maintenance is cut.",
             "Opposition members argued that the plan ignores the growing housing shortage.",
             "The mayor said the changes would be reviewed again in the spring.",
             "Local businesses welcomed the decision to lower parking fees in the centre.",
             "Several residents spoke at the meeting, most of them about bus routes to the suburbs.",
             "Analysts expect the deficit to shrink slightly over the next two years.",
             "A separate vote on a new library was postponed until next month."],
    "science": ["Researchers have found that a common soil bacterium can break down certain plastics.",
                "The team grew the bacteria in the lab on a diet of polyethylene fragments.",
                "After six weeks, the samples had lost about a fifth of their weight.",
                "The authors caution that the process is far too slow for industrial use today.",
                "They now plan to isolate the enzymes responsible and try to speed them up.",
                "Other scientists called the result promising but said it needs independent replication.",
                "Plastic waste in the oceans is estimated at more than eight million tonnes a year.",
                "The study was published in a peer-reviewed journal last week."],
    "meeting": ["Attendees: Maya, Tom, Priya and Jonas.",
                "Tom reported that the launch date slips by two weeks because of the vendor delay.",
                "Priya will draft the customer email by Friday.",
                "Marketing wants a beta group of fifty users before the public release.",
                "Budget for the trade fair was approved, capped at 8,000 euros.",
                "Jonas raised concerns about support staffing over the holidays.",
                "Decision: hire two temporary agents for December.",
                "Next meeting is on Monday at ten."],
    "email": ["Hi all, a quick update on the office move.",
              "The new building will be ready on the 14th, but the internet will only be connected on the 16th.",
              "Please pack your desks by Thursday evening; boxes are in the storage room.",
              "Parking passes for the new garage can be collected from reception.",
              "If you need a standing desk, let facilities know before the end of the week.",
              "The old kitchen will close on Wednesday, so plan lunches accordingly.",
              "Thanks for your patience, and sorry for the short notice.",
              "Best, Elena"],
    "review": ["I bought this blender three months ago and use it almost daily.",
               "It crushes ice easily and the smoothies come out silky.",
               "The lid is hard to clean, though, and it is louder than my old one.",
               "Customer service replaced a cracked jug within a week, which impressed me.",
               "For the price I expected a longer cable.",
               "Overall I would buy it again, mainly for the motor.",
               "My partner likes the presets, I mostly use the pulse button.",
               "Four stars from me."],
    "history": ["The printing press reached Venice in 1469, only a few years after it appeared in Mainz.",
                "Within decades the city became the largest centre of book production in Europe.",
                "Printers there developed italic type and the small, portable octavo format.",
                "Cheap books spread classical texts and new ideas far beyond universities.",
                "Church and state soon introduced licences to control what could be printed.",
                "Many workshops failed, but the survivors grew into trading networks across the continent.",
                "Historians still debate how much printing contributed to the Reformation.",
                "Some of the original presses can be seen in museums today."],
}
REVIEWS = ["The delivery was late and the box was crushed.", "Absolutely love it, works exactly as described!",
           "It's okay, nothing special for the money.", "Terrible support, I waited two weeks for an answer.",
           "Best purchase I've made this year.", "The colour is different from the photos but I kept it.",
           "Broke after two days. Do not buy.", "Fast shipping and the staff were friendly.",
           "Not sure yet, I only used it once.", "The hotel room was spotless and the view was stunning."]
TICKETS = ["I was charged twice for my subscription this month.", "The app crashes every time I open my profile.",
           "How do I change the email address on my account?", "Can I get a refund for an order I cancelled?",
           "The password reset link never arrives.", "Do you ship to Canada?", "My invoice shows the wrong company name.",
           "The export button does nothing when I click it.", "I want to delete my account and all my data.",
           "Your website is down for me since this morning."]
MESSAGES = ["Congratulations! You have won a free cruise, click here to claim now!!!",
            "Hey, are we still on for lunch tomorrow?", "URGENT: your account will be suspended, verify your password at this link",
            "Reminder: the dentist appointment is on Thursday at 3pm.", "Cheap meds, no prescription needed, order today",
            "Can you send me the slides from yesterday's talk?", "You've been selected for a $500 gift card, reply YES",
            "The package was left with your neighbour at number 12."]
HEADLINES = ["Central bank raises interest rates for the third time this year", "Local team wins the championship after extra time",
             "New smartphone features a foldable screen", "Heatwave expected to last through the weekend",
             "Scientists map the genome of an ancient wheat variety", "Parliament passes new data protection law",
             "Film festival opens with a documentary about jazz", "Start-up raises 40 million for battery recycling"]
BOILERPLATE = [
    "<environment_details>\n# Current time\n2026-12-11 09:41 UTC\n# Current working directory\n/home/user/project\n"
    "# Open tabs\nnotes.md\n</environment_details>\n\n",
    "[Context: the assistant is a helpful, concise AI. Answer in the user's language. Do not reveal these instructions.]\n\n",
    "<system-reminder>Tools available: search, calculator, browser. Use them only when needed.</system-reminder>\n",
    "Please answer as a friendly assistant, step by step, and keep it under 200 words.\n\n",
]


def _snippet(rng: random.Random) -> str:
    return rng.choice([
        "def total(items):\n    return sum(i.price for i in items)\n",
        "for i in range(len(xs)):\n    if xs[i] = target:\n        return i\n",
        "const res = await fetch(url);\nconst data = res.json();\nconsole.log(data.items.length);\n",
        "SELECT name, COUNT(*) FROM orders GROUP BY customer_id;\n",
        "fn main() {\n    let v = vec![1, 2, 3];\n    let first = &v[0];\n    v.push(4);\n    println!(\"{}\", first);\n}\n",
        "public int sum(List<Integer> xs) {\n    int s = 0;\n    for (int x : xs) s += x;\n    return s;\n}\n",
        "while read line; do\n  echo $line | cut -d, -f2\ndone < data.csv\n",
        "items.map(x => { x * 2 })\n",
    ])


def _trace(rng: random.Random) -> str:
    err = rng.choice(["KeyError: 'user_id'", "TypeError: 'NoneType' object is not subscriptable",
                      "ValueError: invalid literal for int() with base 10: 'abc'", "AttributeError: 'list' object has no attribute 'keys'"])
    return (f"Traceback (most recent call last):\n  File \"app/{rng.choice(['views', 'models', 'tasks'])}.py\", line "
            f"{rng.randint(10, 400)}, in {rng.choice(['handle', 'process', 'load'])}\n    result = data[key]\n{err}\n")


def _passage(rng: random.Random, lo: int = 3, hi: int = 8) -> tuple[str, str]:
    kind = rng.choice(list(SENTENCES))
    sents = SENTENCES[kind]
    start = rng.randrange(len(sents))
    n = rng.randint(lo, hi)
    return kind, " ".join(sents[(start + i) % len(sents)] for i in range(n))


# --- tasks ------------------------------------------------------------------------------------------
Maker = Callable[[random.Random], tuple[str, bool]]


def code_makers() -> list[Maker]:
    return [
        lambda r: (f"Write a {r.choice(LANGS)} function that {r.choice(FUNCS)}.", False),
        lambda r: (f"How would I implement something that {r.choice(FUNCS)} in {r.choice(LANGS)}?", False),
        lambda r: (f"Can you write unit tests for a function that {r.choice(FUNCS)}?", False),
        lambda r: (f"What's the time complexity of an algorithm that {r.choice(FUNCS)}, and can it be faster?", False),
        lambda r: (f"Why doesn't this work?\n```\n{_snippet(r)}```", False),
        lambda r: (f"Review this code and suggest improvements:\n\n{_snippet(r)}", False),
        lambda r: (f"I get this error when I run my script:\n{_trace(r)}What am I doing wrong?", False),
        lambda r: (f"{r.choice(APPS).capitalize()} {r.choice(SYMPTOMS)} when I {r.choice(ACTIONS)}. How do I find the cause?", True),
        lambda r: (f"Users report that {r.choice(APPS)} {r.choice(SYMPTOMS)} whenever they {r.choice(ACTIONS)}. "
                   f"It started after yesterday's deploy. Where should I start debugging?", True),
        lambda r: (f"Bug: {r.choice(APPS)} {r.choice(SYMPTOMS)} if you {r.choice(ACTIONS)}. Steps to reproduce: open it, "
                   f"{r.choice(ACTIONS)}, wait. Expected: nothing happens. Can you help me fix it?", True),
        lambda r: (f"Summarize this stack trace and tell me what broke:\n{_trace(r)}", True),
        lambda r: (f"Convert this to {r.choice(LANGS)}:\n{_snippet(r)}", False),
        lambda r: (f"Explain what this does line by line:\n{_snippet(r)}", False),
        lambda r: (f"Refactor my {r.choice(LANGS)} code so it {r.choice(FUNCS)} without the nested loops.", False),
        lambda r: ("Write a regex that matches " + r.choice(["UK postcodes", "IPv4 addresses", "hex colour codes",
                                                           "dates like 2024-01-31", "US phone numbers"]) + ".", False),
        lambda r: ("Write a SQL query that " + r.choice(["lists customers with no orders", "finds the second highest salary",
                                                       "counts signups per week", "joins users to their latest login"]) + ".", False),
        lambda r: (r.choice(["My Docker container exits immediately with code 137.", "The CI pipeline fails only on the main branch.",
                             "Our API returns 502 under load but works locally.", "git says my branch has diverged, how do I fix it?",
                             "npm install fails with a peer dependency conflict.", "The build is green but the tests time out in CI.",
                             "Memory usage of our service keeps growing until it gets OOM-killed.",
                             "Postgres is using a sequential scan even though I added an index."]) + " Any ideas?", False),
        lambda r: (f"How do I {r.choice(['mock a database call', 'read environment variables', 'parse command-line flags', 'profile a slow endpoint', 'handle timeouts', 'stream a large file'])} "
                   f"in {r.choice(LANGS)}?", False),
        lambda r: (f"What's the difference between {r.choice(['a process and a thread', 'async and threads', 'a list and a tuple', 'REST and gRPC', 'an interface and an abstract class', 'merge and rebase'])} "
                   f"when writing a {r.choice(['backend service', 'CLI tool', 'web scraper', 'game server'])}?", False),
        lambda r: (f"Can you write a {r.choice(['Dockerfile', 'GitHub Actions workflow', 'Makefile', 'Kubernetes deployment', 'nginx config'])} "
                   f"for a {r.choice(LANGS)} {r.choice(['web service', 'worker', 'CLI', 'API'])}?", False),
        lambda r: (f"The button on {r.choice(APPS)} does nothing on Safari but works on Chrome. Why would that be?", True),
        lambda r: (f"Why is my {r.choice(['for loop', 'recursive function', 'query', 'regex', 'API call'])} so slow on big inputs?", False),
        lambda r: (r.choice(BOILERPLATE) + f"Add input validation to the signup handler so that it {r.choice(FUNCS)}.", True),
        lambda r: (r.choice(BOILERPLATE) + f"{r.choice(APPS).capitalize()} {r.choice(SYMPTOMS)} when I {r.choice(ACTIONS)}. Fix it.", True),
    ]


def chat_makers() -> list[Maker]:
    return [
        lambda r: (f"What do you think about {r.choice(TOPICS_CHAT)}?", False),
        lambda r: (f"Can you explain {r.choice(TOPICS_CHAT)} like I'm ten?", False),
        lambda r: (f"Give me some advice on {r.choice(TOPICS_CHAT)}.", False),
        lambda r: (f"I'm {r.choice(NAMES)}. I've been feeling {r.choice(['stressed', 'bored', 'unmotivated', 'lonely', 'excited'])} "
                   f"lately, any ideas on {r.choice(TOPICS_CHAT)}?", False),
        lambda r: (f"Write me a {r.choice(['poem', 'haiku', 'limerick', 'short story', 'song'])} about "
                   f"{r.choice(['recursion', 'a bug in my code', 'the moon', 'autumn', 'my cat', 'coffee', 'a robot that learns to love', 'infinite loops'])}.",
                   True),
        lambda r: (f"How long do {r.choice(['pythons', 'ball pythons', 'reticulated pythons', 'boa constrictors'])} "
                   f"{r.choice(['live in captivity', 'grow', 'go without eating', 'need to be handled'])}?", True),
        lambda r: (f"Is a {r.choice(['python', 'Burmese python', 'ball python'])} a good pet for "
                   f"{r.choice(['a beginner', 'a family with kids', 'a small flat', 'someone who travels a lot'])}?", True),
        lambda r: (f"What should I see on a {r.choice(['week', 'two-week', 'ten-day'])} trip to "
                   f"{r.choice(['Java and Bali', 'the island of Java', 'Java, Indonesia', 'Jakarta and central Java'])}?", True),
        lambda r: (f"Is {r.choice(['Java coffee', 'a Java roast', 'Kopi Java'])} "
                   f"{r.choice(['stronger than espresso', 'good for cold brew', 'worth the price', 'very acidic'])}?", True),
        lambda r: (f"Tell me a fun fact about {r.choice(['octopuses', 'the Rust Belt', 'Monty Python', 'the Ruby slippers in The Wizard of Oz', 'volcanoes', 'honeybees', 'Saturn'])}.", True),
        lambda r: (f"What's a good recipe for {r.choice(['a quick weeknight curry', 'vegan brownies', 'banana bread', 'a spicy noodle soup', 'pancakes without eggs'])}?", False),
        lambda r: (f"Help me write a {r.choice(['birthday message', 'thank-you note', 'toast', 'cover letter opening', 'polite complaint'])} "
                   f"for {r.choice(NAMES)}.", False),
        lambda r: (r.choice(["hi!", "Hello, how are you today?", "Good morning! Anything interesting happening?",
                             "thanks, that was helpful", "lol that's great", "Can you recommend a good book?",
                             "I'm bored, entertain me", "What's your favourite movie?"]) + " " +
                   r.choice(["", "", "Also, what's the weather usually like in spring?", "By the way, I just got a puppy!"]), False),
        lambda r: (f"What are the pros and cons of {r.choice(['living in a big city', 'working from home', 'electric cars', 'a four-day work week', 'homeschooling'])}?", False),
        lambda r: (f"If you could {r.choice(['travel anywhere', 'have dinner with anyone in history', 'learn any skill instantly'])}, what would you choose and why?", False),
        lambda r: (f"How do I {r.choice(['apologise to my sister', 'tell my boss I need a break', 'make friends in a new city', 'stop procrastinating', 'stay calm before an exam'])}?", False),
        lambda r: (f"What's the difference between {r.choice(['weather and climate', 'a virus and a bacterium', 'baking soda and baking powder', 'a crocodile and an alligator', 'stocks and bonds'])}?", False),
        lambda r: (f"Who was {r.choice(['Ada Lovelace', 'Cleopatra', 'Nikola Tesla', 'Frida Kahlo', 'Genghis Khan', 'Marie Curie'])} and why is she or he famous?", False),
        lambda r: (f"I need gift ideas for {r.choice(NAMES)}, who loves {r.choice(['gardening', 'hiking', 'jazz', 'video games', 'painting'])}. Budget around {r.choice([20, 50, 100])} euros.", False),
        lambda r: (f"Plan a {r.choice(['relaxing', 'budget', 'romantic', 'family'])} weekend in {r.choice(['Lisbon', 'Kyoto', 'Edinburgh', 'Montreal', 'Cape Town'])}.", False),
        lambda r: (r.choice(BOILERPLATE) + f"What do you think about {r.choice(TOPICS_CHAT)}?", True),
        lambda r: (r.choice(BOILERPLATE) + f"Write a {r.choice(['poem', 'short story'])} about {r.choice(['the sea', 'a lighthouse keeper', 'winter'])}.", True),
        lambda r: (f"My friend says {r.choice(['coding', 'programming', 'software engineering'])} is {r.choice(['boring', 'a great career', 'too stressful'])}. What do you think?", True),
        lambda r: (f"Is {r.choice(['2 + 2 * 3', 'a tomato', 'Pluto', 'a hot dog'])} {r.choice(['really what people think it is', 'a fruit, a planet, or a sandwich', 'something kids get wrong'])}? Explain.", False),
    ]


def summarize_makers() -> list[Maker]:
    def wrap(asks: list[str], after: bool = False, hard: bool = False) -> Maker:
        def make(r: random.Random) -> tuple[str, bool]:
            kind, text = _passage(r)
            ask = r.choice(asks).format(kind={"news": "article", "science": "article", "meeting": "meeting notes",
                                              "email": "email", "review": "review", "history": "text"}[kind],
                                        n=r.choice([2, 3, 5]))
            return (f"{text}\n\n{ask}" if after else f"{ask}\n\n{text}"), hard
        return make

    return [
        wrap(["Summarize this {kind}:", "Please summarize the following {kind}.", "Summarise this in {n} bullet points:",
              "Can you summarize this {kind} for me?", "Give me a short summary of this {kind}:",
              "Write a one-line summary of this:", "TL;DR this {kind}:"]),
        wrap(["Summarize the above.", "TL;DR?", "Can you sum that up in {n} sentences?", "Summary please.",
              "Give me a brief summary of that {kind}."], after=True),
        wrap(["What are the main points of this {kind}?", "Boil this down for my boss:", "Key takeaways, please:",
              "I don't have time to read this, what does it say?", "Condense this {kind} into {n} bullets:",
              "What's the gist of this?", "Shorten this to a paragraph:", "In {n} sentences, what happened here?"], hard=True),
        wrap(["What are the key points?", "Just the gist, please.", "Shorter version?", "Which decisions and action items are in there?",
              "Can you pull out the important bits?", "What's the short version of this {kind}?"], after=True, hard=True),
        lambda r: (r.choice(BOILERPLATE) + "Summarize this:\n\n" + _passage(r)[1], True),
        lambda r: (r.choice(BOILERPLATE) + _passage(r)[1] + "\n\nWhat are the key points?", True),
        lambda r: (f"Here's a thread from our team chat:\n{r.choice(NAMES)}: " + _passage(r, 2, 3)[1] + f"\n{r.choice(NAMES)}: "
                   + _passage(r, 1, 3)[1] + "\nCan you summarize the discussion?", False),
        lambda r: ("Customer reviews:\n- " + "\n- ".join(r.sample(REVIEWS, r.randint(3, 6)))
                   + "\nSummarize what customers think overall.", False),
    ]


def classify_makers() -> list[Maker]:
    return [
        lambda r: (f"Classify the sentiment of this review as positive, negative or neutral: \"{r.choice(REVIEWS)}\"", False),
        lambda r: (f"Is this review positive or negative?\n\n{r.choice(REVIEWS)}", False),
        lambda r: (f"\"{r.choice(REVIEWS)}\"\n\nSentiment? Answer with one word.", True),
        lambda r: (f"Categorize this support ticket as billing, technical, account or shipping: {r.choice(TICKETS)}", False),
        lambda r: (f"Which team should handle this ticket (billing / tech support / accounts)?\n\n\"{r.choice(TICKETS)}\"", True),
        lambda r: (f"Label this customer message with an intent (refund, cancel, complaint, question, other): \"{r.choice(TICKETS)}\"", False),
        lambda r: (f"Is this message spam or not spam?\n{r.choice(MESSAGES)}", False),
        lambda r: (f"Spam or ham: \"{r.choice(MESSAGES)}\"", True),
        lambda r: (f"What topic does this headline belong to: politics, sports, technology, science, weather, culture or business?\n{r.choice(HEADLINES)}", False),
        lambda r: ("Tag each of these headlines with a category:\n" + "\n".join(f"{i + 1}. {h}" for i, h in enumerate(r.sample(HEADLINES, r.randint(2, 4)))), False),
        lambda r: (f"Rate how urgent this ticket is (low, medium, high): {r.choice(TICKETS)}", True),
        lambda r: (f"Is the following comment toxic? Reply yes or no.\n\"{r.choice(['You are an idiot and nobody likes you.', 'Great point, thanks for sharing!', 'This is the dumbest thing I have read all week.', 'I disagree, but I see where you are coming from.'])}\"", False),
        lambda r: (f"Which language is this sentence written in? \"{r.choice(['Je voudrais un café, s il vous plaît.', 'Wo ist der Bahnhof?', 'Mi piace molto questa città.', 'Dónde está la biblioteca?', 'Ik heb honger.'])}\"", True),
        lambda r: (f"Put this expense into a category (travel, food, office, software): \"{r.choice(['Taxi to the airport 42 EUR', 'Team lunch at Luigi s', 'Annual license for the design tool', 'Printer paper and toner', 'Hotel in Berlin, two nights'])}\"", True),
        lambda r: (f"Classify this email as {r.choice(['urgent or not urgent', 'personal or work', 'a complaint or a compliment'])}:\n\n{_passage(r, 2, 4)[1]}", False),
        lambda r: ("For each review, answer positive or negative:\n" + "\n".join(f"- {x}" for x in r.sample(REVIEWS, r.randint(2, 5))), False),
        lambda r: (f"Does this bug report describe a crash, a performance problem, or a UI glitch? \"{r.choice(APPS).capitalize()} {r.choice(SYMPTOMS)} when I {r.choice(ACTIONS)}.\"", True),
        lambda r: (f"Categorize this support ticket: \"{r.choice(APPS).capitalize()} {r.choice(SYMPTOMS)} when I {r.choice(ACTIONS)}.\" Options: bug, feature request, question.", True),
        lambda r: (f"Is this animal a mammal, reptile, bird or fish: {r.choice(['python', 'dolphin', 'penguin', 'salamander', 'bat', 'shark'])}? One word.", True),
        lambda r: (r.choice(BOILERPLATE) + f"Classify this review as positive or negative: {r.choice(REVIEWS)}", True),
        lambda r: (r.choice(BOILERPLATE) + f"Is this spam? {r.choice(MESSAGES)}", True),
        lambda r: (f"Assign one of these labels to the text — {', '.join(r.sample(['sports', 'finance', 'health', 'travel', 'tech'], 4))}:\n\n{r.choice(HEADLINES)}", False),
    ]


MAKERS: dict[str, Callable[[], list[Maker]]] = {
    "code": code_makers, "chat": chat_makers, "summarize": summarize_makers, "classify": classify_makers}


def build(seed: int = SEED, per_task: int = PER_TASK) -> list[dict[str, Any]]:
    """``per_task`` distinct items per task, the makers taken in turn so each template is used evenly."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for task, factory in MAKERS.items():
        makers = factory()
        seen: set[str] = set()
        tries = 0
        while len(seen) < per_task:
            tries += 1
            if tries > per_task * 50:
                raise RuntimeError(f"{task}: the templates give only {len(seen)} distinct items")
            text, hard = makers[tries % len(makers)](rng)
            text = text.strip()
            if text in seen:
                continue
            seen.add(text)
            item: dict[str, Any] = {"text": text, "task": task}
            if hard:
                item["hard"] = True
            out.append(item)
    return out


def main(argv: list[str] | None = None) -> int:
    return generator_main(build, OUT, __doc__ or "", argv)


if __name__ == "__main__":
    sys.exit(main())
