import copy

import pytest
import torch
import torch.nn as nn

from sparsedm.formats import is_24_sparse
from sparsedm.train import (SRSTELinear, TimeInput, alpha_sigma, ddim_sample, ddim_step, distill_step, distill_target,
                            logsnr_cosine, predict, progressive_distill, sampler_settings)


class TinyNet(nn.Module):
    """A small random network of (z [B, 8], time [B]); Linear K = 16 and 32 are 2:4 eligible."""

    def __init__(self, seed=0, d=8):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Linear(2 * d, 32)
        self.act = nn.SiLU()
        self.out = nn.Linear(32, d)
        self.d = d
        self.seen = None

    def forward(self, z, time):
        self.seen = time
        h = torch.cat([z, torch.sin(time[:, None] / 7 + torch.arange(self.d, device=z.device))], dim=-1)
        return self.out(self.act(self.inp(h)))


class FreeStudent(nn.Module):
    """A 'network' whose output is a free tensor: the brute-force minimizer of the loss."""

    def __init__(self, shape):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(shape))

    def forward(self, z, time):
        return self.value


def test_cosine_logsnr_schedule():
    t = torch.linspace(0, 1, 101)
    lam = logsnr_cosine(t)
    assert lam.dtype == torch.float64
    assert float(lam[0]) == pytest.approx(20.0) and float(lam[-1]) == pytest.approx(-20.0)
    assert (lam[1:] < lam[:-1]).all()
    assert float(logsnr_cosine(0.5)) == pytest.approx(0.0, abs=1e-9)
    a, s = alpha_sigma(lam)
    torch.testing.assert_close(a ** 2 + s ** 2, torch.ones_like(a))


@pytest.mark.parametrize("prediction", ["v", "eps", "x"])
def test_predict_recovers_x_and_eps(prediction):
    g = torch.Generator().manual_seed(3)
    x, eps = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    t = torch.rand(5, generator=g, dtype=torch.float64) * 0.9 + 0.05
    a, s = (v.float()[:, None] for v in alpha_sigma(logsnr_cosine(t)))
    z = a * x + s * eps
    truth = {"v": a * eps - s * x, "eps": eps, "x": x}[prediction]
    oracle = FreeStudent((5, 8))
    oracle.value.data.copy_(truth)
    x_hat, eps_hat, _ = predict(oracle, z, t, prediction=prediction)
    torch.testing.assert_close(x_hat, x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-4, atol=1e-4)


def test_time_input_conventions():
    net = TinyNet()
    z, t = torch.randn(3, 8), torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
    predict(net, z, t, time_input="logsnr")
    torch.testing.assert_close(net.seen, logsnr_cosine(t).float())
    predict(net, z, t, time_input=("t", 999.0))
    torch.testing.assert_close(net.seen, (t * 999).float())
    assert TimeInput("t", 999).to_manifest() == {"kind": "continuous", "scale": 999.0}
    with pytest.raises(ValueError, match="logsnr"):
        TimeInput("sigma")


@pytest.mark.parametrize("student_steps", [1, 2, 4])
def test_target_makes_one_student_step_equal_two_teacher_steps(student_steps):
    teacher = TinyNet(seed=1).double()
    g = torch.Generator().manual_seed(student_steps)
    z = torch.randn(6, 8, generator=g, dtype=torch.float64)
    t = torch.randint(1, student_steps + 1, (6,), generator=g).double() / student_steps
    x_tilde, z_two = distill_target(teacher, z, t, student_steps)
    # Two teacher steps by hand.
    x1, e1, _ = predict(teacher, z, t)
    z_mid = ddim_step(x1, e1, t - 0.5 / student_steps)
    x2, e2, _ = predict(teacher, z_mid, t - 0.5 / student_steps)
    torch.testing.assert_close(z_two, ddim_step(x2, e2, t - 1.0 / student_steps))
    # One student DDIM step with x_hat = x_tilde (eps_hat implied by z_t) lands on the same point.
    a, s = (v[:, None] for v in alpha_sigma(logsnr_cosine(t)))
    z_one = ddim_step(x_tilde, (z - a * x_tilde) / s, t - 1.0 / student_steps)
    torch.testing.assert_close(z_one, z_two, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("weighting", ["truncated_snr", "snr+1"])
def test_brute_force_student_lands_where_teacher_lands(weighting):
    """Minimize the distillation loss over a free student output; its single DDIM step must then
    reproduce the teacher's two steps, for every sample and time on the student's grid."""
    torch.manual_seed(0)
    teacher, n = TinyNet(seed=2), 4
    x0 = torch.randn(8, 8).clamp(-1, 1)
    noise = torch.randn(8, 8)
    t = torch.tensor([1, 2, 3, 4, 1, 2, 3, 4], dtype=torch.float64) / n
    student = FreeStudent((8, 8))
    opt = torch.optim.LBFGS(student.parameters(), lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = distill_step(teacher, student, x0, student_steps=n, t=t, noise=noise, weighting=weighting).loss
        loss.backward()
        return loss

    opt.step(closure)
    out = distill_step(teacher, student, x0, student_steps=n, t=t, noise=noise, weighting=weighting)
    assert float(out.loss.detach()) < 1e-8
    x_hat, eps_hat, _ = predict(student, out.z_t, t)
    z_student = ddim_step(x_hat, eps_hat, t - 1 / n)
    _, z_teacher = distill_target(teacher, out.z_t, t, n)
    err = (z_student - z_teacher).abs()
    assert torch.allclose(z_student, z_teacher, rtol=1e-4, atol=1e-4), f"max {err.max():.3g} mean {err.mean():.3g}"


def test_brute_force_one_step_sampler_matches_two_step_teacher():
    torch.manual_seed(1)
    teacher = TinyNet(seed=3)
    z1 = torch.randn(4, 8)
    t = torch.ones(4, dtype=torch.float64)
    student = FreeStudent((4, 8))
    opt = torch.optim.LBFGS(student.parameters(), lr=1, max_iter=200, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-14)
    # At t = 1 the noised sample is z1 itself (alpha_1 ~ 5e-5); pass x0 = 0 and noise = z1 / sigma_1.
    sigma1 = float(alpha_sigma(logsnr_cosine(1.0))[1])

    def closure():
        opt.zero_grad()
        loss = distill_step(teacher, student, torch.zeros(4, 8), student_steps=1, t=t, noise=z1 / sigma1).loss
        loss.backward()
        return loss

    opt.step(closure)
    one = ddim_sample(student, z1, 1)
    two = ddim_sample(teacher, z1, 2)
    # The teacher's last x_hat and its z at t = 0 differ by sigma_0 * eps_hat (sigma_0 = 4.5e-5).
    torch.testing.assert_close(one, two, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_loss_weightings_by_hand(prediction):
    teacher, student = TinyNet(seed=4), TinyNet(seed=5)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    t = torch.tensor([1, 2, 3, 4, 5, 6], dtype=torch.float64) / 6
    lam = logsnr_cosine(t)
    snr = lam.exp().float()
    for weighting, w in (("truncated_snr", snr.clamp(min=1)), ("snr+1", snr + 1)):
        out = distill_step(teacher, student, x0, student_steps=6, t=t, noise=noise, prediction=prediction,
                           weighting=weighting)
        by_hand = (w * (out.x_target - out.x_student).pow(2).mean(1)).mean()
        torch.testing.assert_close(out.loss, by_hand, rtol=2e-3, atol=1e-6)
    if prediction == "v":  # SNR + 1 weighting of the x error is the plain v MSE
        out = distill_step(teacher, student, x0, student_steps=6, t=t, noise=noise, weighting="snr+1")
        a, s = (v.float()[:, None] for v in alpha_sigma(lam))
        v_tilde = (a * out.z_t - out.x_target) / s
        v_student = student(out.z_t, lam.float())
        torch.testing.assert_close(out.loss, (v_tilde - v_student).pow(2).mean(), rtol=1e-4, atol=1e-7)


class GaussianTeacher(nn.Module):
    """v = c(logsnr) * z with c a small MLP of logsnr: exact for Gaussian data once fitted."""

    def __init__(self):
        super().__init__()
        self.c = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))

    def forward(self, z, time):
        return self.c(time[:, None] / 10) * z


def _fitted_gaussian_teacher(var):
    torch.manual_seed(0)
    teacher = GaussianTeacher()
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    lam = torch.linspace(-20, 20, 401, dtype=torch.float64)
    a, s = alpha_sigma(lam)
    c_star = ((a - a * var / (a * a * var + s * s)) / s).float()[:, None]  # optimal v / z
    for _ in range(300):
        loss = (teacher.c(lam.float()[:, None] / 10) - c_star).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return teacher


def test_progressive_distill_halves_steps_and_matches_teacher():
    var = 0.25
    teacher = _fitted_gaussian_teacher(var)
    data = torch.randn(4096, 8) * var ** 0.5
    logs = []
    result = progressive_distill(copy.deepcopy(teacher), data, start_steps=8, end_steps=2, iters_per_round=50,
                                 batch_size=128, lr=3e-3, log=logs.append, seed=0)
    assert [h["student_steps"] for h in result.history] == [4, 2]
    assert result.sampler["steps"] == 2 and result.sampler["prediction"] == "v"
    assert result.sampler["schedule"] == {"name": "cosine_logsnr", "logsnr_min": -20.0, "logsnr_max": 20.0}
    assert result.sampler["time_input"] == {"kind": "logsnr"}
    assert result.sampler["_distillation"]["rounds"] == result.history
    assert logs and {"round_steps", "iter", "loss"} <= set(logs[0])
    z = torch.randn(512, 8, generator=torch.Generator().manual_seed(9))
    reference = ddim_sample(teacher, z, 8)
    naive = (ddim_sample(teacher, z, 2) - reference).abs().mean()
    distilled = (ddim_sample(result.student, z, 2) - reference).abs().mean()
    assert distilled < 0.05 * naive, f"distilled {distilled:.4f} vs naive 2-step {naive:.4f}"


def test_progressive_distill_sparse_student_and_settings():
    teacher = TinyNet(seed=6)
    result = progressive_distill(teacher, lambda b: torch.randn(b, 8).clamp(-1, 1), start_steps=4, end_steps=2,
                                 iters_per_round=3, batch_size=4, sparse=True, time_input=("t", 999.0))
    assert not any(isinstance(m, SRSTELinear) for m in result.student.modules())
    assert is_24_sparse(result.student.inp.weight) and is_24_sparse(result.student.out.weight)
    assert result.sampler["time_input"] == {"kind": "continuous", "scale": 999.0}
    assert result.sampler["clip_x0"] == [-1.0, 1.0]
    assert not any(p.requires_grad for p in result.student.parameters())
    with pytest.raises(ValueError, match="power of 2"):
        progressive_distill(teacher, torch.randn(8, 8), start_steps=6, end_steps=4, iters_per_round=1)
    for bad, name in ((dict(start_steps=0, end_steps=0), "start_steps=0"), (dict(batch_size=0), "batch_size=0"),
                      (dict(iters_per_round=-1), "iters_per_round=-1"), (dict(end_steps=1.5), "end_steps=1.5")):
        kwargs = {"start_steps": 4, "end_steps": 2, "iters_per_round": 1, **bad}
        with pytest.raises(ValueError, match=f"{name}: pass a positive integer"):
            progressive_distill(teacher, torch.randn(8, 8), **kwargs)
    assert sampler_settings(4, clip_x0=None)["clip_x0"] is None


@pytest.mark.parametrize("time_input", ["logsnr", ("continuous", 999.0)])
@pytest.mark.parametrize("steps", [1, 4])
def test_settings_drive_the_project_sampler_identically(time_input, steps):
    """The sampler dict progressive_distill records runs in sparsedm.sampling and gives the same
    samples as the training-side reference DDIM."""
    sampling = pytest.importorskip("sparsedm.sampling")

    class ImageNet(nn.Module):  # the project sampler works on [B, C, H, W]
        def __init__(self):
            super().__init__()
            self.net = TinyNet(seed=7, d=8)

        def forward(self, z, time):
            return self.net(z.reshape(z.shape[0], 8), time).reshape(z.shape)

    net = ImageNet()
    settings = sampler_settings(steps, time_input=time_input, extra={"_distillation": {"rounds": []}})
    sampler = sampling.from_config(settings)
    z = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = ddim_sample(net, z, steps, time_input=time_input, clip_x0=(-1, 1))
        theirs = sampler.sample(net, z)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
