"""InfoNCE against hand-computed values; false-negative masking; the single-process gather."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from train.model import false_negative_mask, gather_with_grad, info_nce
from train.trainer import linear_schedule


def _hand_info_nce(q, d, targets, tau, masked=()):
    """-mean_i log(exp(s_i,t_i / tau) / sum_j exp(s_ij / tau)) written out with math."""
    total = 0.0
    for i, qi in enumerate(q):
        logits = []
        for j, dj in enumerate(d):
            if (i, j) in masked:
                continue
            logits.append(sum(a * b for a, b in zip(qi, dj, strict=True)) / tau)
        positive = sum(a * b for a, b in zip(qi, d[targets[i]], strict=True)) / tau
        total += -(positive - math.log(sum(math.exp(x) for x in logits)))
    return total / len(q)


Q = [[1.0, 0.0], [0.6, 0.8]]
D = [[0.8, 0.6], [0.0, 1.0], [1.0, 0.0], [-0.6, 0.8]]


def test_info_nce_matches_hand_computation():
    # Query 0: positive is document 0 (score 0.8); query 1: positive is document 2 (score 0.6).
    tau = 0.5
    expected = _hand_info_nce(Q, D, [0, 2], tau)
    # Written out for query 0: scores /tau = 1.6, 0, 2, -1.2 -> -(1.6 - log(e^1.6+1+e^2+e^-1.2)).
    q0 = -(1.6 - math.log(math.exp(1.6) + 1 + math.exp(2.0) + math.exp(-1.2)))
    q1 = -(1.2 - math.log(math.exp(1.92) + math.exp(1.6) + math.exp(1.2) + math.exp(0.56)))
    assert expected == pytest.approx((q0 + q1) / 2, abs=1e-12)
    got = info_nce(torch.tensor(Q), torch.tensor(D), torch.tensor([0, 2]), tau)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert got.item() == pytest.approx(1.318644, abs=1e-5)


def test_temperature_sharpens_the_loss():
    low = info_nce(torch.tensor(Q), torch.tensor(D), torch.tensor([2, 0]), 0.02).item()
    high = info_nce(torch.tensor(Q), torch.tensor(D), torch.tensor([2, 0]), 1.0).item()
    # Both queries score their positive highest (1.0 and 0.96): a low temperature sharpens
    # the softmax towards it, so the loss falls.
    assert low < high
    assert low == pytest.approx(_hand_info_nce(Q, D, [2, 0], 0.02), abs=1e-4)


def test_masked_documents_leave_the_denominator():
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 2] = True  # document 2 is another known positive of query 0
    got = info_nce(torch.tensor(Q), torch.tensor(D), torch.tensor([0, 2]), 0.5, mask).item()
    assert got == pytest.approx(_hand_info_nce(Q, D, [0, 2], 0.5, masked={(0, 2)}), abs=1e-6)
    assert got < info_nce(torch.tensor(Q), torch.tensor(D), torch.tensor([0, 2]), 0.5).item()


def test_false_negative_mask_spares_the_target():
    doc_keys = torch.tensor([11, 12, 11, 13])
    positive_keys = torch.tensor([[11, -1], [13, 12]])
    targets = torch.tensor([0, 3])
    mask = false_negative_mask(doc_keys, positive_keys, targets).numpy()
    expected = np.array([[False, False, True, False], [False, True, False, False]])
    assert (mask == expected).all()


def test_gather_without_distributed_is_identity_with_grad():
    x = torch.randn(3, 4, requires_grad=True)
    gathered, offset = gather_with_grad(x)
    assert offset == 0 and gathered is x
    gathered.sum().backward()
    assert torch.equal(x.grad, torch.ones(3, 4))


def test_schedule_warms_up_from_above_zero_and_decays_to_zero():
    schedule = linear_schedule(warmup=3, total=10)
    factors = [schedule(step) for step in range(10)]
    assert factors[0] == pytest.approx(0.25)
    assert factors[2] == pytest.approx(0.75)
    assert factors[3] == pytest.approx(1.0)
    assert factors[9] == pytest.approx(1 / 7)
    assert all(a >= b for a, b in zip(factors[3:], factors[4:], strict=False))
