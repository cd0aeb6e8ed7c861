"""Latent and text-conditional sampling: the autoencoder loader (diffusers folder, diffusers-keyed
and latent-diffusion-keyed state_dicts), prompt-embedding files, and ``sparsedm sample`` on a
tiny latent model and a tiny text U-ViT."""

import re

import numpy as np
import pytest
import torch

from sparsedm.sampling.cli import main
from sparsedm.sampling.images import to_uint8
from sparsedm.sampling.latent import LatentError, load_autoencoder, load_contexts
from sparsedm.sampling.run import generate
from sparsedm.sampling.samplers import from_config
from sparsedm.sampling.testing import tiny_latent_factory, tiny_text_factory

diffusers = pytest.importorskip("diffusers")

LATENT = "sparsedm.sampling.testing:tiny_latent_factory"
TEXT = "sparsedm.sampling.testing:tiny_text_factory"


def _tiny_vae(seed=0):
    """A two-level KL autoencoder (latents 4 x H/2 x W/2) with random weights (not the default init:
    zero-initialized layers would hide key mix-ups)."""
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                                  up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[32, 64],
                                  layers_per_block=1, latent_channels=4, norm_num_groups=32)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return vae.eval()


def _to_ldm_keys(sd: dict, n_levels: int) -> dict:
    """diffusers AutoencoderKL keys -> the original latent-diffusion names (attention projections as
    1x1 convs), the layout of U-ViT's autoencoder_kl.pth."""
    out = {}
    for k, v in sd.items():
        n = k.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        n = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", n)
        n = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", n)
        m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.(.*)", n)
        if m:
            level = n_levels - 1 - int(m.group(1))
            n = f"decoder.up.{level}.{'block' if m.group(2) == 'resnets' else 'upsample'}.{m.group(3)}"
        n = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda r: f"mid.block_{int(r.group(1)) + 1}.", n)
        if "mid_block.attentions.0." in n:
            n = n.replace("mid_block.attentions.0.", "mid.attn_1.")
            for a, b in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
                n = n.replace(f".{a}.", f".{b}.")
            if v.dim() == 2:
                v = v[:, :, None, None]
        out[n] = v.clone()
    return out


def _decode_ref(vae, z, scale):
    with torch.no_grad():
        return vae.decode(z / scale).sample.float()


@pytest.fixture(scope="module")
def vae():
    return _tiny_vae()


def test_autoencoder_from_diffusers_folder(tmp_path, vae):
    vae.save_pretrained(tmp_path / "vae")
    ae = load_autoencoder(str(tmp_path / "vae"))
    assert ae.scale == pytest.approx(vae.config.scaling_factor)
    z = torch.randn(2, 4, 4, 4)
    torch.testing.assert_close(ae.decode(z), _decode_ref(vae, z, vae.config.scaling_factor))
    assert load_autoencoder(str(tmp_path / "vae"), scale=0.5).scale == 0.5


@pytest.mark.parametrize("layout", ["diffusers", "ldm", "sd-checkpoint"])
def test_autoencoder_from_state_dict_file(tmp_path, vae, layout):
    sd = vae.state_dict()
    if layout != "diffusers":
        sd = _to_ldm_keys(sd, n_levels=2)
        assert "decoder.up.1.upsample.conv.weight" in sd and "encoder.mid.attn_1.q.weight" in sd
    if layout == "sd-checkpoint":  # a whole latent-diffusion checkpoint: wrapped and prefixed
        path = tmp_path / "model.ckpt"
        torch.save({"state_dict": {**{f"first_stage_model.{k}": v for k, v in sd.items()},
                                   "model.diffusion_model.x.weight": torch.zeros(3)}}, path)
    elif layout == "ldm":
        path = tmp_path / "autoencoder_kl.pth"
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "vae.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    ae = load_autoencoder(str(path), scale=0.23010)
    assert list(ae.vae.config.block_out_channels) == [32, 64] and ae.vae.config.layers_per_block == 1
    z = torch.randn(3, 4, 4, 4)
    torch.testing.assert_close(ae.decode(z), _decode_ref(vae, z, 0.23010))


def test_autoencoder_errors(tmp_path):
    with pytest.raises(LatentError, match="no such file"):
        load_autoencoder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatentError, match="without config.json"):
        load_autoencoder(str(tmp_path / "empty"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(LatentError, match="cannot be read"):
        load_autoencoder(str(tmp_path / "junk.pth"))
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(LatentError, match="not a KL autoencoder"):
        load_autoencoder(str(tmp_path / "other.pth"))


def test_load_contexts_shapes_and_errors(tmp_path):
    one = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    np.save(tmp_path / "one.npy", one)
    c = load_contexts(str(tmp_path / "one.npy"), 5, 16)
    assert c.shape == (1, 5, 16) and torch.equal(c[0], torch.from_numpy(one))
    many = np.random.default_rng(1).standard_normal((3, 5, 16))
    np.savez(tmp_path / "many.npz", many)
    assert load_contexts(str(tmp_path / "many.npz"), 5, 16).shape == (3, 5, 16)
    with pytest.raises(LatentError, match=r"shape \(5, 16\).*\[77, 768\]"):
        load_contexts(str(tmp_path / "one.npy"), 77, 768)
    np.save(tmp_path / "ints.npy", np.zeros((5, 16), dtype=np.int32))
    with pytest.raises(LatentError, match="not floating point"):
        load_contexts(str(tmp_path / "ints.npy"), 5, 16)
    bad = one.copy()
    bad[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(LatentError, match="NaN"):
        load_contexts(str(tmp_path / "nan.npy"), 5, 16)


def test_sample_latent_model_decodes_with_autoencoder(tmp_path, vae, capsys):
    vae.save_pretrained(tmp_path / "vae")
    npz = tmp_path / "s.npz"
    assert main([f"--factory={LATENT}", "-n", "3", "--seed", "7", "--npz", str(npz), "--no-progress"]) == 2
    assert "--autoencoder" in capsys.readouterr().err
    rc = main([f"--factory={LATENT}", "-n", "3", "--seed", "7", "--batch-size", "2", "--npz", str(npz),
               "-o", str(tmp_path / "s.png"), "--autoencoder", str(tmp_path / "vae"), "--no-progress"])
    assert rc == 0
    images = np.load(npz)["arr_0"]
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
    # the same run by hand: latents from generate, then decoder(z / the model's autoencoder_scale)
    f = tiny_latent_factory()
    latents, _ = generate(f["model"], from_config(f["sampler"]), f["shape"], 3, 7, batch_size=3, output="float")
    ref = to_uint8(_decode_ref(vae, torch.from_numpy(latents), 0.5)).numpy()
    assert np.abs(images.astype(int) - ref.astype(int)).max() <= 1  # decoder batch 2 vs 3: float rounding


def test_sample_latent_errors(tmp_path, capsys):
    assert main([f"--factory={LATENT}", "-n", "1", "--npz", str(tmp_path / "a.npz"), "--no-progress",
                 "--autoencoder", str(tmp_path / "none")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([f"--factory={LATENT}", "-n", "1", "--npz", str(tmp_path / "a.npz"), "--no-progress",
                 "--latent-scale", "0.2"]) == 2
    assert "--latent-scale goes with --autoencoder" in capsys.readouterr().err
    assert not (tmp_path / "a.npz").exists()


def test_sample_text_model_with_contexts(tmp_path, capsys):
    rng = np.random.default_rng(0)
    prompts = rng.standard_normal((2, 5, 16)).astype(np.float32)
    empty = rng.standard_normal((5, 16)).astype(np.float32)
    np.save(tmp_path / "prompts.npy", prompts)
    np.save(tmp_path / "empty.npy", empty)
    npz = tmp_path / "t.npz"
    base = [f"--factory={TEXT}", "-n", "3", "--seed", "1", "--npz", str(npz), "--no-progress"]
    assert main(base) == 2
    assert "--context" in capsys.readouterr().err
    assert main(base + ["--context", str(tmp_path / "prompts.npy")]) == 2  # guided: needs the empty prompt
    assert "--uncond-context" in capsys.readouterr().err
    assert main(base + ["--context", str(tmp_path / "empty.npy"), "--uncond-context", str(tmp_path / "prompts.npy")]) == 2
    assert "the one embedding of the empty prompt" in capsys.readouterr().err

    # 4x4 latents saved as images needs an autoencoder; --factory text model is latent: use float output
    f = tiny_text_factory()
    sampler = from_config(f["sampler"])
    ctx, unc = torch.from_numpy(prompts), torch.from_numpy(empty)
    out, _ = generate(f["model"], sampler, f["shape"], 3, 1, batch_size=2, output="float", contexts=ctx, uncond_context=unc)
    # sample 2 uses prompt 0 (i % P), with its own seed: compare with a one-sample run of that seed and prompt
    one, _ = generate(f["model"], sampler, f["shape"], 1, 3, output="float", contexts=ctx[:1], uncond_context=unc)
    np.testing.assert_allclose(out[2], one[0], rtol=1e-5, atol=1e-5)
    # guidance is applied: cfg 0 (no uncond branch) gives other samples
    plain, _ = generate(f["model"], from_config(f["sampler"], cfg_scale=0.0), f["shape"], 3, 1, output="float",
                        contexts=ctx)
    assert np.abs(plain - out).max() > 1e-3
    # and the prompt matters
    swapped, _ = generate(f["model"], sampler, f["shape"], 3, 1, output="float", contexts=ctx.flip(0), uncond_context=unc)
    assert np.abs(swapped[0] - out[0]).max() > 1e-3


def test_sample_text_model_cli_writes_prompt_index(tmp_path, vae):
    vae.save_pretrained(tmp_path / "vae")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "prompts.npy", rng.standard_normal((2, 5, 16)).astype(np.float32))
    np.save(tmp_path / "empty.npy", rng.standard_normal((5, 16)).astype(np.float32))
    npz = tmp_path / "t.npz"
    rc = main([f"--factory={TEXT}", "-n", "3", "--npz", str(npz), "--no-progress", "--autoencoder", str(tmp_path / "vae"),
               "--context", str(tmp_path / "prompts.npy"), "--uncond-context", str(tmp_path / "empty.npy")])
    assert rc == 0
    data = np.load(npz)
    assert data["arr_0"].shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(data["prompt_index"], [0, 1, 0])


def test_context_on_a_model_without_text_is_an_error(tmp_path, capsys):
    np.save(tmp_path / "c.npy", np.zeros((5, 16), dtype=np.float32))
    rc = main(["--factory=sparsedm.sampling.testing:tiny_factory", "-n", "1", "--npz", str(tmp_path / "x.npz"),
               "--no-progress", "--context", str(tmp_path / "c.npy")])
    assert rc == 2 and "text-conditional" in capsys.readouterr().err
