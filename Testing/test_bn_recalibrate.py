"""benchmarks/bn_recalibrate.py: BatchNorm statistics re-collected with dropout off."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import load_script

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bn_recalibrate.py"


@pytest.fixture(scope="module")
def bn_recalibrate():
    return load_script(_PATH)


def test_statistics_are_those_of_the_data_without_dropout(bn_recalibrate):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    net = torch.nn.Sequential(conv, torch.nn.Dropout2d(0.5), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    net[2].running_mean.fill_(7.0)
    net[2].running_var.fill_(9.0)
    weights_before = {
        k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k
    }
    batches = [torch.randn(5, 3, 6, 7) for _ in range(2)]  # equal sizes: the mean of means is the mean
    assert bn_recalibrate.recalibrate(net, batches) == 10
    with torch.no_grad():
        y = [conv(x) for x in batches]  # what the BatchNorm sees with dropout off
    mean = torch.cat(y).mean(dim=(0, 2, 3))
    var = torch.stack([t.var(dim=(0, 2, 3), unbiased=True) for t in y]).mean(dim=0)  # per-batch, averaged
    torch.testing.assert_close(net[2].running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net[2].running_var, var, rtol=1e-5, atol=1e-6)
    assert not net.training and not net[2].training and net[2].momentum == 0.1
    for k, v in weights_before.items():
        assert torch.equal(net.state_dict()[k], v), k


def test_a_network_without_batchnorm_is_refused(bn_recalibrate):
    with pytest.raises(SystemExit, match="no BatchNorm"):
        bn_recalibrate.recalibrate(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1)), [torch.zeros(1, 1, 2, 2)])


def test_batches_mix_the_patients_and_cover_every_slice_once(bn_recalibrate):
    import numpy as np

    # 3 "patients" of 10 slices each, slice value = its index
    slices = np.arange(30, dtype=np.float16).reshape(30, 1, 1, 1)
    batches = list(bn_recalibrate.shuffled_batches(slices, 8, seed=0))
    assert [b.shape[0] for b in batches] == [8, 8, 8, 6] and batches[0].dtype == torch.float32
    seen = torch.cat(batches).flatten().long().tolist()
    assert sorted(seen) == list(range(30))
    assert all(len({i // 10 for i in b.flatten().long().tolist()}) > 1 for b in batches[:3])
    again = torch.cat(list(bn_recalibrate.shuffled_batches(slices, 8, seed=0)))
    assert torch.equal(again, torch.cat(batches))
