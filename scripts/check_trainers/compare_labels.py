"""Whether a trainer kept ftprep's labels: every row it saw (in a prepared dataset folder, or in the
batches sitecustomize.py recorded) has exactly the labels of the same row in the ftprep folder.

    python compare_labels.py FTPREP_FOLDER (--prepared FOLDER | --batches FILE.jsonl)

Padding the trainer added (attention_mask 0, or positions past the row's own length) is left out;
every other position must carry the same label, so each -100 must still be -100. Exit 1 otherwise."""

import argparse
import json
import sys

from datasets import load_from_disk


def rows_seen(args):
    if args.prepared:
        dataset = load_from_disk(args.prepared)
        yield from zip(dataset["input_ids"], dataset["labels"])
        return
    with open(args.batches, encoding="utf-8") as lines:
        for line in lines:
            batch = json.loads(line)
            masks = batch.get("attention_mask") or [[1] * len(ids) for ids in batch["input_ids"]]
            for ids, mask, labels in zip(batch["input_ids"], masks, batch["labels"]):
                length = sum(1 for value in mask if value)  # right padding: the row is the first `length` tokens
                yield ids[:length], labels[:length]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--prepared")
    parser.add_argument("--batches")
    args = parser.parse_args()
    source = load_from_disk(args.folder)
    expected = {tuple(ids): labels for ids, labels in zip(source["input_ids"], source["labels"])}
    rows = ignored = ignored_kept = 0
    for ids, labels in rows_seen(args):
        want = expected.get(tuple(ids))
        if want is None:
            print(f"a row the trainer saw is not in {args.folder} (changed tokens): {ids[:12]}...")
            return 1
        ignored += sum(1 for label in want if label == -100)
        ignored_kept += sum(1 for got, label in zip(labels, want) if label == -100 and got == -100)
        if list(labels) != list(want):
            changed = sum(1 for got, label in zip(labels, want) if got != label)
            print(f"row {rows}: {changed} of {len(want)} labels differ from {args.folder}")
            return 1
        rows += 1
    if rows == 0:
        print("the trainer saw no rows")
        return 1
    print(f"labels unchanged in {rows} rows: {ignored_kept} of {ignored} -100 labels survived")
    return 0


if __name__ == "__main__":
    sys.exit(main())
