"""Writes the small hand-made dataset files of tests/data_plugins into tests/fixtures/data/:
good files for orca_math (JSONL and the same rows as a JSON array), alpaca and jsonl, with
non-ASCII text, and one file per bad-input case (malformed JSON, a missing field, a
mistyped field, an empty file, bytes that are not UTF-8, a mix of good and bad rows, and
JSON-array faults). These are inputs, not peer references: the expected values live in
the test and in shuffle_numpy.json (tests/reference/shuffle_reference.py).

Run:  ~/.cache/qft-peers/bin/python tests/reference/data_fixtures.py
"""
import json
import os

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                   "tests", "fixtures", "data")


def main():
    os.makedirs(OUT, exist_ok=True)
    os.chdir(OUT)
    orca = [
        {"question": "Zoë has 3 boxes of 12 crayons. How many crayons does she have?", "answer": "3 × 12 = 36.\n#### 36"},
        {"question": "A café sells 48 croissants in the morning and half as many in the afternoon. How many does it sell in all?", "answer": "48 / 2 = 24; 48 + 24 = 72.\n#### 72"},
        {"question": "What is 7 + 8?", "answer": "15", "source": "extra fields are ignored"},
        {"question": "Émile walks 2.5 km each day for 4 days. How far does he walk?", "answer": "2.5 × 4 = 10 km.\n#### 10"},
        {"question": "日本 has 47 prefectures; 8 are in Kyūshū/Okinawa. How many are elsewhere?", "answer": "47 - 8 = 39.\n#### 39"},
        {"question": "A recipe needs {2} cups of flour per batch. How much for 3 batches?", "answer": "2 × 3 = 6 cups.\n#### 6"},
        {"question": "Tom saves $5 a week. How much after 9 weeks?", "answer": "5 × 9 = $45.\n#### $45"},
        {"question": "Split 100 € equally among 4 friends.", "answer": "100 / 4 = 25 €.\n#### 25"},
        {"question": "The ratio of cats to dogs is 3:2 with 15 cats. How many dogs?", "answer": "15 / 3 × 2 = 10.\n#### 10"},
        {"question": "Line one\nline two: what is 6 × 7?", "answer": "\"Forty-two\" — 42.\n#### 42"},
    ]
    with open("orca_small.jsonl", "w", encoding="utf-8") as f:
        for r in orca:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.write("\n")  # a trailing blank line is no row
    with open("orca_small_array.json", "w", encoding="utf-8") as f:
        json.dump(orca, f, ensure_ascii=False, indent=2)
        f.write("\n")
    alpaca = [
        {"instruction": "Give three tips for staying healthy.", "input": "", "output": "1. Eat well.\n2. Exercise.\n3. Sleep."},
        {"instruction": "Translate to French.", "input": "Good morning, Zoë!", "output": "Bonjour, Zoë !"},
        {"instruction": "Name the capital of Japan.", "output": "東京 (Tokyo)."},
        {"instruction": "Summarize: {braces} stay as they are.", "input": "Text with {curly} braces.", "output": "Braces {kept}."},
        {"instruction": "Sort the numbers.", "input": "3, 1, 2", "output": "1, 2, 3"},
        {"instruction": "Say hello.", "input": "", "output": "Hello."},
    ]
    with open("alpaca_small.json", "w", encoding="utf-8") as f:
        json.dump(alpaca, f, ensure_ascii=False, indent=1)
        f.write("\n")
    qa = [
        {"context": "Paris is in France.", "q": "Where is Paris?", "a": "In France.", "id": 1},
        {"context": "Water boils at 100 °C at sea level.", "q": "When does water boil?", "a": "At 100 °C.", "id": 2},
        {"context": "Ångström is a unit of length.", "q": "What is an ångström?", "a": "10⁻¹⁰ m.", "id": 3},
    ]
    with open("generic_small.jsonl", "w", encoding="utf-8") as f:
        for r in qa:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")

    def good(i):
        return json.dumps({"question": "Question %d?" % i, "answer": "Answer %d." % i})

    with open("bad_malformed.jsonl", "w") as f:  # row 3 lacks a comma
        f.write(good(1) + "\n" + good(2) + "\n" + '{"question": "Question 3?" "answer": "Answer 3."}' + "\n" + good(4) + "\n")
    with open("bad_missing.jsonl", "w") as f:  # row 2 misspells "answer"
        f.write(good(1) + "\n" + '{"question": "Question 2?", "answr": "typo"}' + "\n" + good(3) + "\n")
    with open("bad_mistyped.jsonl", "w") as f:  # row 3 (line 4) has a number for an answer
        f.write(good(1) + "\n" + good(2) + "\n\n" + '{"question": "Question 3?", "answer": 42}' + "\n")
    open("empty.jsonl", "w").close()
    with open("bad_utf8.jsonl", "wb") as f:  # row 2 holds a Latin-1 e-acute
        f.write((good(1) + "\n").encode())
        f.write('{"question": "Caf'.encode() + b"\xe9" + ' au lait?", "answer": "Yes."}\n'.encode())
    with open("bad_mixed.jsonl", "wb") as f:  # rows 2 and 4 are bad
        f.write((good(1) + "\n").encode())
        f.write(b'{"question": "Question 2?"}\n')
        f.write((good(3) + "\n").encode())
        f.write(b'{"question": "Question 4?", "answer": "\xff"}\n')
        f.write((good(5) + "\n").encode())
        f.write((good(6) + "\n").encode())
    with open("bad_array_row.json", "w") as f:  # row 2 has a trailing comma inside its object
        f.write('[\n  {"question": "Question 1?", "answer": "Answer 1."},\n  {"question": "Question 2?", "answer": "Answer 2.",},\n  {"question": "Question 3?", "answer": "Answer 3."}\n]\n')
    with open("bad_array_unclosed.json", "w") as f:
        f.write('[\n  {"question": "Question 1?", "answer": "Answer 1."},\n  {"question": "Question 2?", "answer": "Answer 2."}\n')
    with open("bad_array_field.json", "w") as f:
        f.write('[{"question": "Question 1?", "answer": "Answer 1."},\n {"question": ["Question", 2], "answer": "Answer 2."}]\n')
    print("wrote the dataset fixtures into", OUT)


if __name__ == "__main__":
    main()
