"""A small CLIP on captioned MNIST (lesson 12): train it (or load it), then measure what it learned.

    python benchmarks/clip.py --train-minutes 10 --threads 2 --export   # train 10 min on 2 threads, ship mnist_clip
    python benchmarks/clip.py                                           # load diffedu/weights/mnist_clip.pt, measure

Training: lesson 09's captions (4 per training image, written from its pixels with the training templates,
70 % of the extreme attributes said), `diffedu.clip.train_clip` with the symmetric InfoNCE loss. Then, on the
10,000 MNIST test digits:

- zero_shot_accuracy (task "digit"): each digit's class is the nearest of ten class vectors, each the mean
  embedding of the prompts that name a digit ("a seven", "an image of a 7", ...), with the training phrasings
  and, separately, the held-out ones. No classifier head is trained: the prompts are the classifier.
- zero_shot_accuracy (tasks "thickness", "slant", "size"): for the test digits at an extreme level of an
  attribute, the prompt "a {low word} {noun}" against "a {high word} {noun}" for their own class (chance 0.5).
- recall_at_1 / recall_at_5: 1,000 test digits captioned in the held-out phrasings with every extreme attribute
  said, in pools of 100: image to text and text to image; a retrieved item counts when its class and attribute
  levels are the query's (diffedu.clip.retrieval_recall).
- clip_score of the test digits against their own captions, and against the captions of other digits.

Every figure goes to benchmarks/results/clip.jsonl. Never fails on a number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from record import record  # noqa: E402

from diffedu.captions import Captioner, fill_template  # noqa: E402
from diffedu.checkpoints import weights_dir  # noqa: E402
from diffedu.clip import (  # noqa: E402
    CLIPTrainConfig,
    MiniCLIP,
    caption_tokens,
    class_prompts,
    export_clip,
    load_clip,
    mnist_clip,
    retrieval_recall,
    similarity,
    train_clip,
    zero_shot_classifier,
)
from diffedu.course.profiles import device_name  # noqa: E402
from diffedu.data import load_dataset, uint8_to_float  # noqa: E402
from diffedu.metrics import clip_score  # noqa: E402
from diffedu.models.unet import count_parameters  # noqa: E402
from diffedu.train_cli import git_commit  # noqa: E402

SETTINGS = dict(batch_size=256, lr=2e-3, weight_decay=0.01, warmup_steps=100, max_shift=2, captions_per_image=4,
                mention_prob=0.7, seed=0)


def train_model(minutes: float, out: Path, threads: int) -> tuple[MiniCLIP, dict, Captioner]:
    data = load_dataset("mnist", "train", dtype="uint8")
    captioner = Captioner.fit("mnist", data.x, data.y)
    torch.manual_seed(SETTINGS["seed"])
    model = MiniCLIP(mnist_clip(captioner.vocabulary()))
    started = time.perf_counter()
    tokens = caption_tokens(model.tokenizer, captioner, data.x, data.y, per_image=SETTINGS["captions_per_image"],
                            mention_prob=SETTINGS["mention_prob"])
    print(f"captioned {len(data)} images x {tokens.shape[1]} in {time.perf_counter() - started:.0f} s (not counted); "
          f"e.g. {model.tokenizer.decode(tokens[:3, 0])}", flush=True)
    config = CLIPTrainConfig(batch_size=SETTINGS["batch_size"], lr=SETTINGS["lr"],
                             weight_decay=SETTINGS["weight_decay"], warmup_steps=SETTINGS["warmup_steps"],
                             max_shift=SETTINGS["max_shift"], max_seconds=minutes * 60, seed=SETTINGS["seed"])
    print(f"MiniCLIP: {count_parameters(model):,} parameters (image {count_parameters(model.image_encoder):,}, text "
          f"{count_parameters(model.text_encoder) + count_parameters(model.text_proj):,}); {threads} thread(s); "
          f"{minutes} min", flush=True)
    result = train_clip(model, uint8_to_float(data.x), tokens, config, checkpoint=out)
    tail = result.losses[-100:]
    record_ = {
        "command": "python benchmarks/clip.py " + " ".join(sys.argv[1:]), "dataset": "mnist",
        "data_source": data.source, "images": len(data), "parameters": count_parameters(model), "settings": SETTINGS,
        "train_config": dataclasses.asdict(config), "steps": result.steps, "seconds": round(result.seconds, 1),
        "images_per_second": round(result.images_per_s, 1), "threads": threads,
        "final_loss": sum(tail) / max(len(tail), 1), "temperature": model.temperature,
        "device": device_name(torch.device("cpu")), "torch": str(torch.__version__),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": git_commit(),
    }
    out.with_suffix(".json").write_text(json.dumps(record_, indent=2) + "\n")
    print(f"trained {result.steps} steps in {result.seconds / 60:.1f} min ({result.images_per_s:.0f} images/s), final "
          f"loss {record_['final_loss']:.3f}, temperature {model.temperature:.4f}", flush=True)
    return model, record_, captioner


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-minutes", type=float, default=None, help="train for this long (default: load the weights)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "mnist_clip.pt", help="training checkpoint")
    p.add_argument("--export", action="store_true", help="write diffedu/weights/NAME.pt after training")
    p.add_argument("--name", default="mnist_clip")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", default=os.environ.get("DIFFEDU_PROFILE", "cpu"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.train_minutes is not None:
        model, train_record, captioner = train_model(args.train_minutes, args.out, args.threads)
        if args.export:
            path = export_clip(model, weights_dir() / f"{args.name}.pt", name=args.name, record=train_record,
                               captioner=captioner)
            print(f"exported to {path} ({path.stat().st_size / 2**20:.2f} MB)")
    else:
        model, info = load_clip(args.name, device="cpu")
        train_record, captioner = info["record"], info["captioner"]
    model.eval()
    test = load_dataset("mnist", "test")
    base = {"model": args.name, "train_steps": train_record["steps"], "train_seconds": train_record["seconds"],
            "train_threads": train_record["threads"], "train_command": train_record["command"],
            "parameters": train_record["parameters"], "test_images": len(test)}

    def put(metric: str, value: float, unit: str = "fraction", **settings: object) -> None:
        record("clip", metric, value, unit, profile=args.profile, device="cpu", settings={**base, **settings})

    # zero-shot digits, with the training phrasings and with the held-out ones
    for templates in ("train", "heldout"):
        prompts = class_prompts(captioner, templates)
        weights = zero_shot_classifier(model, prompts)
        predicted = torch.cat([(model.encode_image(test.x[i: i + 1000]) @ weights.T).argmax(1)
                               for i in range(0, len(test), 1000)])
        put("zero_shot_accuracy", float((predicted == test.y).float().mean()), task="digit", prompts=templates,
            chance=0.1, prompts_per_class=len(prompts[0]))
    # zero-shot attributes: low word against high word, own class given
    levels = captioner.attributes(test.x, test.y)
    for attribute in (a for a in captioner.spec.attributes if a.kind == "tertile"):
        right = total = 0
        for label in range(10):
            for level in (0, 2):
                sel = (test.y == label) & (levels[attribute.name] == level)
                if not bool(sel.any()):
                    continue
                noun = captioner.spec.nouns[label][0]
                pair = [fill_template("{a} {adj} {noun}", noun, [attribute.words[lv][0]]) for lv in (0, 2)]
                choice = similarity(model, test.x[sel], pair).argmax(1)  # 0: the low word, 1: the high word
                right += int((choice == level // 2).sum())
                total += int(sel.sum())
        put("zero_shot_accuracy", right / total, task=attribute.name, prompts="a {low or high word} {noun}",
            chance=0.5, images=total)
    # retrieval: 1,000 test digits with full held-out captions, pools of 100
    n = 1000
    sub = test.x[:n], test.y[:n]
    sub_levels = {k: v[:n] for k, v in levels.items()}
    captions = captioner.describe(sub[1], sub_levels, templates="heldout", seed=0, mention_prob=1.0)
    keys = [(int(sub[1][i]), *(int(sub_levels[a][i]) for a in captioner.attribute_names)) for i in range(n)]
    with torch.no_grad():
        u = model.encode_image(sub[0])
        v = model.embed_prompts(captions, warn=False)
    recall = retrieval_recall(u, v, keys, ks=(1, 5), pool=100)
    for direction in ("image_to_text", "text_to_image"):
        for k in (1, 5):
            put(f"recall_at_{k}", recall[f"{direction}@{k}"], direction=direction, pool=100, pairs=n,
                captions="held-out phrasings, every extreme attribute said")
    # CLIP score of real pairs, and of mismatched ones
    mine = captioner.describe(test.y, levels, seed=1, mention_prob=0.7)
    put("clip_score", clip_score(model, test.x, mine), "score", pairs="test digits, own captions")
    shuffled = [mine[i] for i in torch.randperm(len(mine), generator=torch.Generator().manual_seed(0)).tolist()]
    put("clip_score", clip_score(model, test.x, shuffled), "score", pairs="test digits, other digits' captions")
    print("example captions:", captions[:3])


if __name__ == "__main__":
    main()
