"""The fused site kernel: the reference tensor arithmetic, bit for bit, or a clean fallback."""

import os
import shutil

import pytest
import torch
from sdm.converter.convert import convert
from sdm.converter.spiking import site_kernel
from sdm.converter.spiking.layers import SpikingActivation
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.converter.spiking.tsm import enable_tsm

pytestmark = pytest.mark.skipif(not site_kernel.available(), reason="no C compiler: the PyTorch path runs")


def test_running_mean_equals_cumsum_over_t():
    seq = torch.randn(8, 3, 5, 7, generator=torch.Generator().manual_seed(0)) * 1e3
    t = torch.arange(1, 9, dtype=torch.float32).view(-1, 1, 1, 1)
    with torch.no_grad():
        assert torch.equal(site_kernel.running_mean(seq), seq.cumsum(0) / t)


def _site(signed: bool, tsm: bool, generator: torch.Generator, neuron: str = "exact",
          max_payload: int | None = None, emission: tuple[int, int, bool] = (0, 0, False)) -> SpikingActivation:
    norm = torch.nn.GroupNorm(2, 6)
    site = SpikingActivation("s", norm, torch.nn.SiLU(), 6, timesteps=5, signed=signed, membrane_init=0.3,
                             neuron=neuron, max_payload=max_payload, emission=emission)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0, generator=generator)
        site.neuron.threshold_pos.uniform_(0.05, 0.6, generator=generator)
        site.neuron.threshold_neg.uniform_(0.02, 0.3, generator=generator)
        site.output_shift.uniform_(-0.1, 0.1, generator=generator)
        if tsm:
            site.tsm = torch.nn.Parameter(torch.rand(5, generator=generator) + 0.5)
    site.neuron.threshold_scale = 1.1
    return site


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("tsm", [False, True])
@pytest.mark.parametrize("neuron, max_payload, emission", [("exact", None, (0, 0, False)), ("exact", 2, (0, 0, False)),
                                                            ("exact", None, (1, 1, False)), ("exact", 2, (0, 2, False)),
                                                            ("exact", None, (4, 0, False)), ("exact", None, (0, 0, True)),
                                                            ("single-spike", None, (0, 0, False))])
def test_fused_site_equals_the_tensor_op_paths(signed, tsm, neuron, max_payload, emission):
    generator = torch.Generator().manual_seed(3)
    site = _site(signed, tsm, generator, neuron, max_payload, emission)
    current = torch.randn(5 * 3, 6, 4, 4, generator=generator) * 2
    site.neuron.monitor = True
    outputs, counts = [], []
    for mode in ("fused", "in-place", "autograd"):
        site.neuron.reset()
        site.neuron.reset_monitor()
        if mode == "autograd":
            out = site(current.clone().requires_grad_(True)).detach()
        else:
            with torch.no_grad():
                if mode == "fused":
                    out = site(current)
                else:
                    with site_kernel.disabled():
                        out = site(current)
        outputs.append(out)
        counts.append((site.neuron.spike_count, site.neuron.neuron_steps))
        if neuron == "single-spike":
            assert site.neuron.v == 0.0  # membranes are not held after the call
    assert counts[0][0] > 0
    for other in range(1, 3):
        assert torch.equal(outputs[0], outputs[other])
        assert counts[0] == counts[other]


def test_the_kernel_leaves_its_input_current_alone():
    site = _site(True, False, torch.Generator().manual_seed(4))
    current = torch.randn(10, 6, 4, 4)
    before = current.clone()
    with torch.no_grad():
        site(current)
    assert torch.equal(current, before)


def test_without_a_compiler_the_tensor_path_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    site_kernel._library.cache_clear()
    try:
        assert not site_kernel.available()
        assert not list(tmp_path.rglob("*.so"))
    finally:
        site_kernel._library.cache_clear()  # later callers see the restored environment


@pytest.mark.parametrize("policy", [ConversionPolicy(timesteps=5, threshold_scale=1.05),
                                    ConversionPolicy(timesteps=4, emission="hysteresis", spiking="full"),
                                    ConversionPolicy(timesteps=4, emission="eager"),
                                    ConversionPolicy(timesteps=3, negative_lobe="relu", norm="frozen"),
                                    ConversionPolicy(timesteps=2, input_encoding="spikes", attention="instant")])
def test_fused_sites_equal_the_tensor_op_path(tiny_source, tiny_record, policy):
    snn = convert(tiny_source, tiny_record, policy)
    enable_tsm(snn)
    with torch.no_grad():
        for site in snn.sites().values():
            site.tsm.uniform_(0.8, 1.2)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    counts = []
    with torch.no_grad():
        snn.set_monitor(True)
        fused = snn(x, 300).sample
        counts.append({name: (n.spike_count, n.neuron_steps) for name, n in snn.neurons().items()})
        snn.set_monitor(True)
        with site_kernel.disabled():  # the PyTorch ops: what CUDA runs
            reference = snn(x, 300).sample
        counts.append({name: (n.spike_count, n.neuron_steps) for name, n in snn.neurons().items()})
    assert torch.equal(fused, reference)
    assert counts[0] == counts[1] and sum(c for c, _ in counts[0].values()) > 0


def test_an_unwritable_cache_is_named_once_and_the_kernel_still_runs(tmp_path, monkeypatch, capsys):
    if shutil.which(os.environ.get("CC") or "cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    site_kernel._library.cache_clear()
    try:
        assert site_kernel.available() and site_kernel.available()
        notice = [line for line in capsys.readouterr().err.splitlines() if "site-kernel cache not writable" in line]
        assert len(notice) == 1 and str(tmp_path / "cache") in notice[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    finally:
        site_kernel._library.cache_clear()


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("neuron", ["exact", "single-spike"])
def test_fused_closed_form_equals_the_tensor_op_twin(signed, neuron):
    generator = torch.Generator().manual_seed(5)
    site = _site(signed, False, generator, neuron)
    mean = torch.randn(3, 6, 4, 4, generator=generator) * 2
    mean[0, 0, 0, :2] = torch.tensor([0.0, -0.0])
    with torch.no_grad():
        fused = site.twin(mean)
        with site_kernel.disabled():
            reference = site.twin(mean)
    graded = site.twin(mean.clone().requires_grad_(True)).detach()
    assert torch.equal(fused, reference) and torch.equal(fused, graded)
    assert len(fused.unique()) > 3  # several levels reached, not a constant


def test_the_fused_closed_form_of_an_identity_site_leaves_its_input_alone():
    site = SpikingActivation("s", torch.nn.Identity(), torch.nn.Identity(), 6, timesteps=4, signed=True,
                             membrane_init=0.5)
    with torch.no_grad():
        site.neuron.threshold_pos.fill_(0.5)
        site.neuron.threshold_neg.fill_(0.25)
        mean = torch.randn(2, 6, 3, 3, generator=torch.Generator().manual_seed(6))
        kept = mean.clone()
        out = site.twin(mean)
    assert torch.equal(mean, kept) and not torch.equal(out, mean)
