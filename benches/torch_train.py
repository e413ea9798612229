#!/usr/bin/env python3
"""PyTorch + transformers baseline for `cotlab bench train`: the same model (an HF dir exported by
`cotlab export --model default`), the same token ids (`cotlab bench train --save-batch`), the same
precision (f32; with --bf16 the forward under torch.autocast("cpu", dtype=torch.bfloat16), as
`cotlab bench train --dtype bf16`: bf16 matmuls, f32 master weights, AdamW state and loss), loss (mean NLL of tokens 1..T), optimizer (AdamW, no weight decay) and steps.
Prints one JSON object on the last line, with the same keys as cotlab's --json output."""
import argparse, json, resource, time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM


class LoRALinear(torch.nn.Module):
    """The same LoRA as cotlab (PEFT convention), hand-rolled so no extra package is needed."""

    def __init__(self, base, r=8, alpha=16):
        super().__init__()
        self.base = base
        self.a = torch.nn.Parameter(torch.empty(r, base.in_features).uniform_(-base.in_features ** -0.5, base.in_features ** -0.5))
        self.b = torch.nn.Parameter(torch.zeros(base.out_features, r))
        self.scale = alpha / r

    def forward(self, x):
        return self.base(x) + (x @ self.a.t() @ self.b.t()) * self.scale


def load_student(path, lora):
    """The model in f32, in training mode; with lora, frozen but for LoRA on q and v (cotlab's
    default targets). Returns it and its trainable parameters."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.train()
    if lora:
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in model.model.layers:
            layer.self_attn.q_proj = LoRALinear(layer.self_attn.q_proj)
            layer.self_attn.v_proj = LoRALinear(layer.self_attn.v_proj)
    return model, [p for p in model.parameters() if p.requires_grad]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", required=True, help="JSON list of token-id lists")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (mixed precision) for the forward")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, params = load_student(a.model, a.lora)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    ids = torch.tensor(json.load(open(a.batch)), dtype=torch.long)
    times, cpu, losses, fwd, bwd, optt = [], [], [], [], [], []
    for _ in range(a.steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            logits = model(input_ids=ids).logits
        logits = logits.float()
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        fwd.append(t1 - t0); bwd.append(t2 - t1); optt.append(time.perf_counter() - t2)
        losses.append(loss.item())
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    step_s = sum(times[1:]) / (len(times) - 1)
    out = {
        "tokens_per_s": ids.numel() / step_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step_s": step_s,
        "mode": "lora" if a.lora else "full",
        "dtype": "bf16" if a.bf16 else "f32",
        "cpu_s_per_step": sum(cpu[1:]) / (len(cpu) - 1),
        "losses": losses,
        "threads": torch.get_num_threads(),
        "fwd_s": sum(fwd[1:]) / (len(fwd) - 1),
        "bwd_s": sum(bwd[1:]) / (len(bwd) - 1),
        "opt_s": sum(optt[1:]) / (len(optt) - 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
