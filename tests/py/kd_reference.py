"""The offline-KD loss of cotlab's `train::kd` in PyTorch (float64), and its gradient w.r.t. the
student's logits. The KL term is TRL's `generalized_jsd_loss` with beta = 0 (forward KL,
`F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True)`), on the
teacher's top-k support: teacher log-probs renormalised over the top-k, student log-probs a
full-vocabulary log-softmax at T read at the top-k ids.

Usage: kd_reference.py CASE.json  (logits, targets, ids, logprobs, alpha, temperature)
Prints {"loss": float, "grad": [[...]]} (loss = sum over rows / rows)."""
import json
import sys

import torch
import torch.nn.functional as F

case = json.load(open(sys.argv[1]))
logits = torch.tensor(case["logits"], dtype=torch.float64, requires_grad=True)
targets = torch.tensor(case["targets"], dtype=torch.long)
ids = torch.tensor(case["ids"], dtype=torch.long)
teacher = torch.tensor(case["logprobs"], dtype=torch.float64)
alpha, t = case["alpha"], case["temperature"]

teacher_log_probs = F.log_softmax(teacher, dim=-1)  # renormalised over the top-k
student_log_probs = F.log_softmax(logits / t, dim=-1).gather(1, ids)
# TRL generalized_jsd_loss, beta == 0 branch: forward KL(teacher || student).
kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True).sum()
ce = F.cross_entropy(logits, targets, reduction="sum")
loss = ((1 - alpha) * ce + alpha * t * t * kl) / logits.shape[0]
loss.backward()
print(json.dumps({"loss": loss.item(), "grad": logits.grad.tolist()}))
