"""cotlab's on-policy distillation loss (`train::distill`) as TRL defines it, in PyTorch
(float64), and its gradient w.r.t. the student's logits.

`generalized_jsd_loss` below is the text of TRL's `GKDTrainer.generalized_jsd_loss`
(huggingface/trl, trl/experimental/gkd/gkd_trainer.py, TRL 1.16.0; Apache-2.0), with its
reduction fixed to a sum over positions: cotlab divides by the window's response tokens
itself, which this script does for one window (loss = sum / rows, as TRL's batchmean with
every position labelled).

Usage: jsd_reference.py CASE.json  (student, teacher, beta, temperature)
Prints {"loss": float, "grad": [[...]]}."""
import json
import sys

import torch
import torch.nn.functional as F


def generalized_jsd_loss(student_logits, teacher_logits, beta=0.5, temperature=1.0):
    # Apply temperature scaling
    student_logits = student_logits / temperature
    teacher_logits = teacher_logits / temperature

    # Compute log probabilities for student and probabilities for teacher
    student_log_probs = F.log_softmax(student_logits, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits, dim=-1)

    if beta == 0:
        jsd = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(teacher_log_probs, student_log_probs, reduction="none", log_target=True)
    else:
        # Compute the log of the mixture distribution
        # log(a + b) = log(exp(log(a)) + exp(log(b))) -> for mixture
        beta = torch.tensor(beta, dtype=student_log_probs.dtype, device=student_log_probs.device)
        mixture_log_probs = torch.logsumexp(
            torch.stack([student_log_probs + torch.log1p(-beta), teacher_log_probs + torch.log(beta)]),
            dim=0,
        )

        # Compute KL divergences using F.kl_div
        kl_teacher = F.kl_div(mixture_log_probs, teacher_log_probs, reduction="none", log_target=True)
        kl_student = F.kl_div(mixture_log_probs, student_log_probs, reduction="none", log_target=True)

        # Compute the Generalized Jensen-Shannon Divergence
        jsd = beta * kl_teacher + (1 - beta) * kl_student

    return jsd.sum()


case = json.load(open(sys.argv[1]))
student = torch.tensor(case["student"], dtype=torch.float64, requires_grad=True)
teacher = torch.tensor(case["teacher"], dtype=torch.float64)
loss = generalized_jsd_loss(student, teacher, beta=case["beta"], temperature=case["temperature"]) / student.shape[0]
loss.backward()
print(json.dumps({"loss": loss.item(), "grad": student.grad.tolist()}))
