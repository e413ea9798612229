#!/usr/bin/env python3
"""transformers baseline for `cotlab bench job`: the same SFT job, done the way an HF Trainer run
does it. Same model (HF dir from `cotlab export --model default`), same examples in the same
micro-batches and steps, same learning rate per step (`cotlab bench job --save-plan`), f32; with
--bf16 the forward under torch.autocast("cpu", dtype=torch.bfloat16), as Trainer's bf16=True does.
Like Trainer with its default collator (DataCollatorForSeq2Seq): each micro-batch right-padded to
its longest example, labels -100 on the prompt and the padding, the model's own loss with
num_items_in_batch (the step's token-mean loss, as transformers >= 4.46 computes it under
gradient accumulation), gradients clipped to max_grad_norm, torch AdamW.
Prints one JSON object on the last line, with the same keys as cotlab's --json output."""
import argparse, json, os, resource, sys, time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from torch_train import load_student  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--plan", required=True, help="JSON from cotlab bench job --save-plan")
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (mixed precision) for the forward")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    plan = json.load(open(a.plan))
    model, params = load_student(a.model, a.lora)
    opt = torch.optim.AdamW(params, lr=plan["steps"][0]["lr"], weight_decay=plan["weight_decay"], betas=(0.9, 0.999), eps=1e-8)
    times, cpu, losses, tokens = [], [], [], []
    for step in plan["steps"]:
        t0, c0 = time.perf_counter(), time.process_time()
        window = [e for mb in step["micro_batches"] for e in mb]
        items = sum(len(e["ids"]) - e["prompt_len"] for e in window)
        total = 0.0
        for mb in step["micro_batches"]:
            width = max(len(e["ids"]) for e in mb)
            ids = torch.tensor([e["ids"] + [0] * (width - len(e["ids"])) for e in mb])
            mask = torch.tensor([[1] * len(e["ids"]) + [0] * (width - len(e["ids"])) for e in mb])
            labels = torch.tensor([[-100] * e["prompt_len"] + e["ids"][e["prompt_len"]:] + [-100] * (width - len(e["ids"])) for e in mb])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=items).loss
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, plan["max_grad_norm"])
        for g in opt.param_groups:
            g["lr"] = step["lr"]
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
        tokens.append(sum(len(e["ids"]) for e in window))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    mean = lambda v: sum(v[1:]) / (len(v) - 1)  # the first step is the warm-up
    out = {
        "steps": len(times) - 1,
        "tokens_per_step": mean(tokens),
        "step_s": mean(times),
        "cpu_s_per_step": mean(cpu),
        "tokens_per_s": mean(tokens) / mean(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "losses": losses,
        "threads": torch.get_num_threads(),
        "dtype": "bf16" if a.bf16 else "f32",
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
