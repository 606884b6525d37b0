"""Generate ``cascade_eval.jsonl``: the labelled items ``modelyard cascade calibrate`` runs.

    python -m modelyard.datasets._make_cascade_eval            # rewrites the file beside this one
    python -m modelyard.datasets._make_cascade_eval --check    # exit 1 if the file is not what it makes

Seeded (``random.Random(SEED)``), so the output is byte-identical on every run. Three tasks, each
with a checker that needs no judgement (routing/checkers.py):

- ``arithmetic``: easy (one-digit sums) to hard (three-digit products, two-step expressions,
  percentages); checker ``number`` (the last number in the answer).
- ``facts``: capitals, chemical symbols and elements, units, planets, authors, misc; checker
  ``accept`` (any listed variant as a whole word, case-insensitive) or ``regex``.
- ``code``: a Python function to write; checker ``tests`` (assert lines run against the answer's
  code in an isolated subprocess).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

from modelyard.datasets import generator_main

SEED = 20261203
OUT = Path(__file__).with_name("cascade_eval.jsonl")

SYSTEM = {
    "arithmetic": "You are a calculator. Reply with the final number only, no words.",
    "facts": "Answer with the shortest correct answer: a word or a name, no explanation.",
    "code": "You write correct Python. Reply with only the function in one ```python code block, no explanation.",
}
MAX_TOKENS = {"arithmetic": 24, "facts": 24, "code": 200}


def _item(task: str, n: int, level: str, question: str, check: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"{task}-{n:03d}", "task": task, "level": level,
            "messages": [{"role": "system", "content": SYSTEM[task]}, {"role": "user", "content": question}],
            "max_tokens": MAX_TOKENS[task], "check": check}


def arithmetic(rng: random.Random) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[str] = set()

    def gen(level: str, count: int, make: Any) -> None:
        """``count`` distinct questions from ``make(rng) -> (question, value)``."""
        done = 0
        while done < count:
            q, value = make(rng)
            if q in seen:
                continue
            seen.add(q)
            out.append(_item("arithmetic", len(out) + 1, level, q, {"number": value}))
            done += 1

    def percent(r: random.Random) -> tuple[str, int]:
        p, n = r.choice([10, 20, 25, 50, 75]), r.randint(1, 20) * 20
        return f"What is {p}% of {n}?", p * n // 100

    def division(r: random.Random) -> tuple[str, int]:
        b, q = r.randint(3, 12), r.randint(3, 40)
        return f"What is {b * q} divided by {b}?", q

    def ab(lo: int, hi: int, lo2: int, hi2: int, op: str) -> Any:
        def make(r: random.Random) -> tuple[str, int]:
            a, b = r.randint(lo, hi), r.randint(lo2, hi2)
            return f"What is {a} {op} {b}?", {"+": a + b, "-": a - b, "*": a * b}[op]
        return make

    def two_step(r: random.Random) -> tuple[str, int]:
        a, b, c = r.randint(2, 20), r.randint(2, 20), r.randint(2, 9)
        return f"What is ({a} + {b}) * {c}?", (a + b) * c

    gen("easy", 25, ab(1, 9, 1, 9, "+"))
    gen("easy", 20, ab(2, 9, 2, 9, "*"))
    gen("medium", 20, ab(10, 99, 10, 99, "+"))
    gen("medium", 15, ab(10, 60, 61, 99, "-"))
    gen("hard", 15, ab(11, 99, 11, 99, "*"))
    gen("hard", 15, two_step)
    gen("medium", 10, division)
    gen("hard", 10, percent)
    return out


CAPITALS = [
    ("France", ["Paris"]), ("Germany", ["Berlin"]), ("Italy", ["Rome", "Roma"]), ("Spain", ["Madrid"]),
    ("Portugal", ["Lisbon", "Lisboa"]), ("Japan", ["Tokyo"]), ("China", ["Beijing", "Peking"]),
    ("India", ["New Delhi", "Delhi"]), ("Russia", ["Moscow"]), ("Canada", ["Ottawa"]),
    ("Australia", ["Canberra"]), ("Brazil", ["Brasilia", "Brasília"]), ("Argentina", ["Buenos Aires"]),
    ("Mexico", ["Mexico City", "Ciudad de México"]), ("Egypt", ["Cairo"]), ("Kenya", ["Nairobi"]),
    ("Nigeria", ["Abuja"]), ("South Korea", ["Seoul"]), ("Thailand", ["Bangkok"]), ("Vietnam", ["Hanoi"]),
    ("Turkey", ["Ankara"]), ("Greece", ["Athens"]), ("Poland", ["Warsaw"]), ("Sweden", ["Stockholm"]),
    ("Norway", ["Oslo"]), ("Finland", ["Helsinki"]), ("Denmark", ["Copenhagen"]), ("Ireland", ["Dublin"]),
    ("Austria", ["Vienna", "Wien"]), ("Switzerland", ["Bern", "Berne"]), ("Netherlands", ["Amsterdam"]),
    ("Belgium", ["Brussels"]), ("Hungary", ["Budapest"]), ("Czech Republic", ["Prague"]),
    ("Peru", ["Lima"]), ("Chile", ["Santiago"]), ("Colombia", ["Bogota", "Bogotá"]), ("Cuba", ["Havana"]),
    ("Indonesia", ["Jakarta"]), ("Philippines", ["Manila"]), ("Pakistan", ["Islamabad"]),
    ("Iran", ["Tehran"]), ("Iraq", ["Baghdad"]), ("Saudi Arabia", ["Riyadh"]), ("Morocco", ["Rabat"]),
    ("Ethiopia", ["Addis Ababa"]), ("New Zealand", ["Wellington"]), ("Ukraine", ["Kyiv", "Kiev"]),
    ("Romania", ["Bucharest"]), ("Venezuela", ["Caracas"]),
]
ELEMENTS = [
    ("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("sodium", "Na"), ("potassium", "K"), ("lead", "Pb"),
    ("copper", "Cu"), ("mercury", "Hg"), ("tin", "Sn"), ("oxygen", "O"), ("hydrogen", "H"), ("carbon", "C"),
    ("nitrogen", "N"), ("helium", "He"), ("calcium", "Ca"), ("zinc", "Zn"), ("chlorine", "Cl"),
    ("magnesium", "Mg"), ("neon", "Ne"), ("sulfur", "S"), ("uranium", "U"), ("tungsten", "W"),
]
FACTS = [
    ("How many centimeters are in one meter?", {"number": 100}),
    ("How many meters are in one kilometer?", {"number": 1000}),
    ("How many grams are in one kilogram?", {"number": 1000}),
    ("How many minutes are in one hour?", {"number": 60}),
    ("How many seconds are in one minute?", {"number": 60}),
    ("How many hours are in one day?", {"number": 24}),
    ("How many days are in a week?", {"number": 7}),
    ("How many days are in a leap year?", {"number": 366}),
    ("How many months are in a year?", {"number": 12}),
    ("How many millimeters are in one centimeter?", {"number": 10}),
    ("At how many degrees Celsius does water boil at sea level?", {"number": 100}),
    ("At how many degrees Celsius does water freeze?", {"number": 0}),
    ("How many sides does a hexagon have?", {"number": 6}),
    ("How many sides does a triangle have?", {"number": 3}),
    ("How many legs does a spider have?", {"number": 8}),
    ("How many continents are there on Earth?", {"number": 7}),
    ("How many bits are in one byte?", {"number": 8}),
    ("How many players are on a soccer team on the field?", {"number": 11}),
    ("Which planet is closest to the Sun?", {"accept": ["Mercury"]}),
    ("Which planet is known as the Red Planet?", {"accept": ["Mars"]}),
    ("What is the largest planet in the Solar System?", {"accept": ["Jupiter"]}),
    ("Which planet has the most famous rings?", {"accept": ["Saturn"]}),
    ("What is the third planet from the Sun?", {"accept": ["Earth"]}),
    ("What is the largest ocean on Earth?", {"accept": ["Pacific", "Pacific Ocean"]}),
    ("What is the longest river in South America?", {"accept": ["Amazon"]}),
    ("Who wrote 'Romeo and Juliet'?", {"accept": ["Shakespeare", "William Shakespeare"]}),
    ("Who wrote 'Pride and Prejudice'?", {"accept": ["Jane Austen", "Austen"]}),
    ("Who wrote '1984'?", {"accept": ["George Orwell", "Orwell", "Eric Blair"]}),
    ("Who painted the Mona Lisa?", {"accept": ["Leonardo da Vinci", "Leonardo", "da Vinci"]}),
    ("Who developed the theory of general relativity?", {"accept": ["Einstein", "Albert Einstein"]}),
    ("What gas do plants absorb from the air for photosynthesis?", {"accept": ["carbon dioxide", "CO2"]}),
    ("What is the chemical formula of water?", {"accept": ["H2O", "H₂O"]}),
    ("What is the hardest natural substance?", {"accept": ["diamond", "diamonds"]}),
    ("What is the boiling point of water in Fahrenheit at sea level?", {"number": 212}),
    ("What is the square root of 144?", {"number": 12}),
    ("What is the freezing point of water in Fahrenheit?", {"number": 32}),
    ("Which language is mainly spoken in Brazil?", {"accept": ["Portuguese"]}),
    ("What is the currency of Japan?", {"accept": ["yen"]}),
    ("What is the currency of the United Kingdom?", {"accept": ["pound", "pounds", "pound sterling", "sterling", "GBP"]}),
    ("What is the tallest mountain on Earth?", {"accept": ["Everest", "Mount Everest", "Mt. Everest"]}),
    ("What color do you get by mixing blue and yellow?", {"accept": ["green"]}),
    ("Name one primary color of light.", {"regex": r"(?i)\b(red|green|blue)\b"}),
    ("Write the number 10 in binary digits.", {"regex": r"(?<![0-9])(0b)?1010(?![0-9])"}),
    ("What is the opposite of 'hot'?", {"accept": ["cold"]}),
    ("In which country are the pyramids of Giza?", {"accept": ["Egypt"]}),
    ("What is the smallest prime number?", {"number": 2}),
    ("How many strings does a standard guitar have?", {"number": 6}),
    ("What is the main language of Mexico?", {"accept": ["Spanish"]}),
]


def facts(rng: random.Random) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(level: str, q: str, check: dict[str, Any]) -> None:
        out.append(_item("facts", len(out) + 1, level, q, check))

    for country, names in CAPITALS:
        add("capital", f"What is the capital of {country}?", {"accept": names})
    for name, symbol in ELEMENTS:
        add("element", f"What is the chemical symbol for {name}?", {"accept": [symbol], "case_sensitive": True})
    for name, symbol in rng.sample(ELEMENTS, 10):
        add("element", f"Which chemical element has the symbol {symbol}? Answer with its name.", {"accept": [name]})
    for q, check in FACTS:
        add("misc", q, check)
    return out


# Code tasks: (name, signature, description with {k}, tests with {k}), k drawn per variant.
CODE = [
    ("add_k", "add_k(xs)", "returns a new list with {k} added to each number in the list xs",
     ["assert add_k([1, 2, 3]) == [{k1}, {k2}, {k3}]", "assert add_k([]) == []", "assert add_k([-{k}]) == [0]"]),
    ("count_over", "count_over(xs)", "returns how many numbers in the list xs are greater than {k}",
     ["assert count_over([{k}, {k1}, {k2}, 0]) == 2", "assert count_over([]) == 0", "assert count_over([{k}]) == 0"]),
    ("repeat_word", "repeat_word(w)", "returns the string w repeated {k} times with no separator",
     ["assert repeat_word('ab') == 'ab' * {k}", "assert repeat_word('') == ''"]),
    ("times_k", "times_k(n)", "returns n multiplied by {k}",
     ["assert times_k(3) == 3 * {k}", "assert times_k(0) == 0", "assert times_k(-2) == -2 * {k}"]),
    ("divisible", "divisible(n)", "returns True if the integer n is divisible by {k}, else False",
     ["assert divisible({k}) is True", "assert divisible({k1}) is False", "assert divisible(0) is True"]),
    ("first_k", "first_k(s)", "returns the first {k} characters of the string s (all of s if it is shorter)",
     ["assert first_k('abcdefghijkl') == 'abcdefghijkl'[:{k}]", "assert first_k('a') == 'a'"]),
    ("clamp_k", "clamp_k(x)", "returns x limited to the range 0 to {k} inclusive",
     ["assert clamp_k(-5) == 0", "assert clamp_k({k1}) == {k}", "assert clamp_k(1) == 1"]),
    ("power_k", "power_k(x)", "returns x raised to the power {k}",
     ["assert power_k(2) == 2 ** {k}", "assert power_k(1) == 1", "assert power_k(0) == 0"]),
]
CODE_FIXED = [
    ("reverse_string", "reverse_string(s)", "returns the string s reversed",
     ["assert reverse_string('abc') == 'cba'", "assert reverse_string('') == ''"]),
    ("is_palindrome", "is_palindrome(s)", "returns True if the string s reads the same backwards, else False",
     ["assert is_palindrome('racecar')", "assert not is_palindrome('abc')", "assert is_palindrome('')"]),
    ("count_vowels", "count_vowels(s)", "returns the number of vowels (a, e, i, o, u, either case) in s",
     ["assert count_vowels('Hello World') == 3", "assert count_vowels('xyz') == 0", "assert count_vowels('AEIOU') == 5"]),
    ("factorial", "factorial(n)", "returns n! for a non-negative integer n",
     ["assert factorial(0) == 1", "assert factorial(5) == 120", "assert factorial(10) == 3628800"]),
    ("fib", "fib(n)", "returns the n-th Fibonacci number with fib(0) == 0 and fib(1) == 1",
     ["assert fib(0) == 0", "assert fib(1) == 1", "assert fib(10) == 55", "assert fib(20) == 6765"]),
    ("is_prime", "is_prime(n)", "returns True if the integer n is a prime number, else False",
     ["assert is_prime(2)", "assert is_prime(13)", "assert not is_prime(1)", "assert not is_prime(15)", "assert not is_prime(0)"]),  # noqa: E501
    ("gcd", "gcd(a, b)", "returns the greatest common divisor of two positive integers",
     ["assert gcd(12, 18) == 6", "assert gcd(7, 5) == 1", "assert gcd(10, 10) == 10"]),
    ("sum_digits", "sum_digits(n)", "returns the sum of the decimal digits of the non-negative integer n",
     ["assert sum_digits(0) == 0", "assert sum_digits(123) == 6", "assert sum_digits(9999) == 36"]),
    ("max_of", "max_of(xs)", "returns the largest number in the non-empty list xs without using max()",
     ["assert max_of([1, 5, 3]) == 5", "assert max_of([-3, -1, -2]) == -1", "assert max_of([7]) == 7"]),
    ("evens", "evens(xs)", "returns the even numbers of the list xs, in order",
     ["assert evens([1, 2, 3, 4]) == [2, 4]", "assert evens([]) == []", "assert evens([1, 3]) == []"]),
    ("running_sum", "running_sum(xs)", "returns the list of running totals of xs",
     ["assert running_sum([1, 2, 3]) == [1, 3, 6]", "assert running_sum([]) == []", "assert running_sum([5]) == [5]"]),
    ("dedupe", "dedupe(xs)", "returns xs without duplicates, keeping the first occurrence order",
     ["assert dedupe([3, 1, 3, 2, 1]) == [3, 1, 2]", "assert dedupe([]) == []"]),
    ("word_count", "word_count(s)", "returns the number of whitespace-separated words in s",
     ["assert word_count('a b  c') == 3", "assert word_count('') == 0", "assert word_count('one') == 1"]),
    ("title_case", "title_case(s)", "returns s with the first letter of each space-separated word upper-cased and the rest lower-cased",  # noqa: E501
     ["assert title_case('hello world') == 'Hello World'", "assert title_case('pYTHON') == 'Python'"]),
    ("c_to_f", "c_to_f(c)", "converts degrees Celsius to Fahrenheit",
     ["assert c_to_f(0) == 32", "assert c_to_f(100) == 212", "assert abs(c_to_f(37) - 98.6) < 1e-9"]),
    ("flatten", "flatten(xss)", "flattens a list of lists by one level",
     ["assert flatten([[1, 2], [3], []]) == [1, 2, 3]", "assert flatten([]) == []"]),
    ("char_freq", "char_freq(s)", "returns a dict mapping each character of s to how often it occurs",
     ["assert char_freq('abca') == {'a': 2, 'b': 1, 'c': 1}", "assert char_freq('') == {}"]),
    ("to_binary", "to_binary(n)", "returns the binary representation of the non-negative integer n as a string without prefix",
     ["assert to_binary(0) == '0'", "assert to_binary(5) == '101'", "assert to_binary(255) == '11111111'"]),
    ("fizzbuzz", "fizzbuzz(n)", "returns 'Fizz' if n is divisible by 3, 'Buzz' if by 5, 'FizzBuzz' if by both, else str(n)",
     ["assert fizzbuzz(3) == 'Fizz'", "assert fizzbuzz(10) == 'Buzz'", "assert fizzbuzz(30) == 'FizzBuzz'", "assert fizzbuzz(7) == '7'"]),  # noqa: E501
    ("second_largest", "second_largest(xs)", "returns the second largest distinct number of xs (at least two distinct values)",
     ["assert second_largest([1, 3, 2]) == 2", "assert second_largest([5, 5, 4]) == 4", "assert second_largest([-1, -2]) == -2"]),
    ("mean", "mean(xs)", "returns the arithmetic mean of the non-empty list xs",
     ["assert mean([1, 2, 3]) == 2", "assert mean([5]) == 5", "assert abs(mean([1, 2]) - 1.5) < 1e-9"]),
    ("is_anagram", "is_anagram(a, b)", "returns True if the strings a and b are anagrams of each other, else False",
     ["assert is_anagram('listen', 'silent')", "assert not is_anagram('abc', 'abd')", "assert is_anagram('', '')"]),
    ("count_char", "count_char(s, c)", "returns how many times the character c occurs in s",
     ["assert count_char('banana', 'a') == 3", "assert count_char('', 'a') == 0"]),
    ("chunks", "chunks(xs, n)", "splits the list xs into consecutive chunks of length n (the last may be shorter)",
     ["assert chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]", "assert chunks([], 3) == []"]),
    ("rotate", "rotate(xs, k)", "rotates the list xs to the left by k positions",
     ["assert rotate([1, 2, 3, 4], 1) == [2, 3, 4, 1]", "assert rotate([1, 2, 3], 3) == [1, 2, 3]", "assert rotate([], 2) == []"]),  # noqa: E501
    ("median", "median(xs)", "returns the median of the non-empty list of numbers xs",
     ["assert median([3, 1, 2]) == 2", "assert median([4, 1, 3, 2]) == 2.5", "assert median([7]) == 7"]),
    ("caesar", "caesar(s, k)", "shifts each lowercase letter of s by k positions in the alphabet (wrapping), leaving other characters unchanged",  # noqa: E501
     ["assert caesar('abc', 1) == 'bcd'", "assert caesar('xyz', 3) == 'abc'", "assert caesar('a b!', 1) == 'b c!'"]),
    ("merge_sorted", "merge_sorted(a, b)", "merges two sorted lists into one sorted list",
     ["assert merge_sorted([1, 3], [2, 4]) == [1, 2, 3, 4]", "assert merge_sorted([], [1]) == [1]", "assert merge_sorted([], []) == []"]),  # noqa: E501
    ("product", "product(xs)", "returns the product of the numbers in xs (1 for an empty list)",
     ["assert product([2, 3, 4]) == 24", "assert product([]) == 1", "assert product([0, 5]) == 0"]),
    ("vowel_strip", "vowel_strip(s)", "returns s with every vowel (a, e, i, o, u, either case) removed",
     ["assert vowel_strip('Hello') == 'Hll'", "assert vowel_strip('AEIOU') == ''", "assert vowel_strip('xyz') == 'xyz'"]),
    ("digits_rev", "digits_rev(n)", "returns the integer whose decimal digits are those of the positive integer n reversed",
     ["assert digits_rev(123) == 321", "assert digits_rev(120) == 21", "assert digits_rev(7) == 7"]),
    ("nth_triangle", "nth_triangle(n)", "returns the n-th triangular number 1 + 2 + ... + n",
     ["assert nth_triangle(1) == 1", "assert nth_triangle(4) == 10", "assert nth_triangle(0) == 0"]),
    ("leap_year", "leap_year(y)", "returns True if the year y is a Gregorian leap year, else False",
     ["assert leap_year(2000)", "assert not leap_year(1900)", "assert leap_year(2024)", "assert not leap_year(2023)"]),
    ("common", "common(a, b)", "returns the sorted list of distinct values present in both lists a and b",
     ["assert common([1, 2, 2, 3], [2, 3, 4]) == [2, 3]", "assert common([], [1]) == []"]),
    ("longest_word", "longest_word(s)", "returns the longest space-separated word of s (the first one on ties)",
     ["assert longest_word('a bbb cc') == 'bbb'", "assert longest_word('aa bb') == 'aa'"]),
    ("snake_case", "snake_case(s)", "converts a camelCase string to snake_case",
     ["assert snake_case('helloWorld') == 'hello_world'", "assert snake_case('a') == 'a'", "assert snake_case('getHTTPCode').startswith('get_')"]),  # noqa: E501
]


def code(rng: random.Random) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(level: str, name: str, sig: str, desc: str, tests: list[str]) -> None:
        q = f"Write a Python function `{sig}` that {desc}."
        out.append(_item("code", len(out) + 1, level, q, {"tests": tests, "entry": name}))

    for name, sig, desc, tests in CODE_FIXED:
        add("fixed", name, sig, desc, tests)
    for name, sig, desc, tests in CODE:
        for k in rng.sample(range(2, 10), 6):
            fmt = {"k": k, "k1": k + 1, "k2": k + 2, "k3": k + 3}
            add("param", name, sig, desc.format(**fmt), [t.format(**fmt) for t in tests])
    return out


def build(seed: int = SEED) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return arithmetic(rng) + facts(rng) + code(rng)


def main(argv: list[str] | None = None) -> int:
    return generator_main(build, OUT, __doc__ or "", argv)


if __name__ == "__main__":
    sys.exit(main())
