"""Train the `demo` model from scratch on CPU and write it as a diffusers Stable Diffusion folder.

    python training/train.py                 # all stages, resuming from training/work/ if present
    python training/train.py --export-only   # rewrite the diffusers folder from the latest checkpoint

Stages (each checkpointed to training/work/ every --checkpoint-seconds, so a killed run resumes):
  1. vae    an 8x AutoencoderKL (4 levels as in SD, 4 latent channels) on 64 px images drawn on the fly
  2. latents the posterior (mean, std) of a fixed set of images, and the VAE's scaling factor
  3. unet   a UNet2DConditionModel and a CLIP text encoder, trained together with the epsilon objective
            on the shipped noise schedule; 10 % empty captions for classifier-free guidance; EMA weights
  4. export the EMA weights, the CLIP tokenizer and the scheduler config to diffdiff_cli/models/demo/

Determinism: one CPU thread; every random draw of step `i` comes from a generator seeded with
(seed, stage, i) and images from shapes.sample(seed, index), so a resumed run makes the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import shapes  # noqa: E402

WORK = HERE / "work"
EXPORT = ROOT / "diffdiff_cli" / "models" / "demo"

# The shipped scheduler. Linear betas (DDPM's) instead of SD's scaled-linear: on an 8x8 latent the
# scaled-linear schedule leaves sqrt(alpha_bar) ~ 0.07 of the image at the first step, enough for the
# old colours to leak through a strength-1 edit; linear leaves ~ 0.01.
SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
    "trained_betas": None,
}

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=16,
    sample_size=64,
)
UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 128),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=32,
)
TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_hidden_layers=2,
    max_position_embeddings=77,
    projection_dim=64,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def step_generator(seed: int, stage: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + stage * 100_000_007 + step)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="tmp-", suffix=".pt")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict | None:
    return torch.load(path, weights_only=False) if path.is_file() else None


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def make_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def make_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffdiff_cli.models.tokenizer import VOCAB_SIZE

    return CLIPTextModel(CLIPTextConfig(vocab_size=VOCAB_SIZE, **TEXT_CONFIG))


def make_tokenizer():
    from transformers import CLIPTokenizer

    from diffdiff_cli.models.tokenizer import write_clip_tokenizer_files

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer_files(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp, local_files_only=True)


# ---------------------------------------------------------------- stage 1: VAE


def train_vae(args) -> None:
    path = WORK / "vae.pt"
    torch.manual_seed(args.seed)
    vae = make_vae()
    opt = torch.optim.Adam(vae.parameters(), lr=args.vae_lr)
    state = load_checkpoint(path)
    step = 0
    if state:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        log(f"vae: resumed at step {step}")
    if step >= args.vae_steps:
        return
    vae.train()
    last_save, started, running = time.monotonic(), time.monotonic(), None
    while step < args.vae_steps:
        images, _ = shapes.batch(args.seed + 1, step * args.vae_batch, args.vae_batch)
        x = to_tensor(images)
        gen = step_generator(args.seed, 1, step)
        for group in opt.param_groups:
            group["lr"] = args.vae_lr * min(1.0, (step + 1) / 100)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        y = vae.decode(z).sample
        rec = (y - x).abs().mean() + (y - x).pow(2).mean()
        kl = posterior.kl().mean()
        loss = rec + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running = rec.item() if running is None else 0.98 * running + 0.02 * rec.item()
        if step % 50 == 0:
            rate = (time.monotonic() - started) / 50
            started = time.monotonic()
            log(f"vae step {step}/{args.vae_steps} rec {running:.4f} kl {kl.item():.1f} ({rate:.2f} s/step)")
        if time.monotonic() - last_save > args.checkpoint_seconds or step == args.vae_steps:
            save_checkpoint(path, {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step})
            last_save = time.monotonic()


def load_vae():
    vae = make_vae()
    vae.load_state_dict(load_checkpoint(WORK / "vae.pt")["model"])
    return vae.eval()


# ---------------------------------------------------------------- stage 2: latents


def encode_dataset(args) -> None:
    path = WORK / "latents.pt"
    if path.is_file():
        done = torch.load(path)
        if done["count"] == args.dataset_size and done["vae_step"] == args.vae_steps:
            return
    vae = load_vae()
    means, stds, captions = [], [], []
    chunk = 256
    with torch.inference_mode():
        for start in range(0, args.dataset_size, chunk):
            count = min(chunk, args.dataset_size - start)
            images, caps = shapes.batch(args.seed + 2, start, count)
            posterior = vae.encode(to_tensor(images)).latent_dist
            means.append(posterior.mean.clone())
            stds.append(posterior.std.clone())
            captions += caps
    mean, std = torch.cat(means), torch.cat(stds)
    # SD's convention: latents are multiplied by scaling_factor = 1 / (std of the latents)
    scaling = float(1.0 / torch.cat([mean.flatten(), (mean + std * torch.randn(mean.shape, generator=step_generator(args.seed, 2, 0))).flatten()]).std())
    log(f"latents: {args.dataset_size} images, scaling_factor {scaling:.4f}, posterior std mean {std.mean():.4f}")
    save_checkpoint(path, {"mean": mean, "std": std, "captions": captions, "scaling": scaling,
                           "count": args.dataset_size, "vae_step": args.vae_steps})


# ---------------------------------------------------------------- stage 3: UNet + text encoder


def tokenize_all(tokenizer, captions: list[str]) -> tuple[torch.Tensor, dict[str, int]]:
    unique = sorted(set(captions) | {""})
    ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    return ids, {c: i for i, c in enumerate(unique)}


def train_unet(args) -> None:
    from diffusers import DDPMScheduler

    path = WORK / "unet.pt"
    data = torch.load(WORK / "latents.pt")
    mean, std, scaling = data["mean"], data["std"], data["scaling"]
    tokenizer = make_tokenizer()
    ids, index = tokenize_all(tokenizer, data["captions"])
    caption_index = torch.tensor([index[c] for c in data["captions"]])
    empty = index[""]
    noise_sched = DDPMScheduler(**{k: v for k, v in SCHEDULER.items() if k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")})
    alphas = noise_sched.alphas_cumprod

    torch.manual_seed(args.seed + 3)
    unet = make_unet()
    torch.manual_seed(args.seed + 4)
    text = make_text_encoder()
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.Adam(params, lr=args.unet_lr)
    ema = [p.detach().clone() for p in params]
    step = 0
    state = load_checkpoint(path)
    if state:
        unet.load_state_dict(state["unet"])
        text.load_state_dict(state["text"])
        opt.load_state_dict(state["opt"])
        ema = state["ema"]
        step = state["step"]
        log(f"unet: resumed at step {step}")
    unet.train()
    text.train()
    last_save, started, running = time.monotonic(), time.monotonic(), None
    n = mean.shape[0]
    while step < args.unet_steps:
        gen = step_generator(args.seed, 3, step)
        pick = torch.randint(0, n, (args.unet_batch,), generator=gen)
        x0 = (mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=gen)) * scaling
        caps = caption_index[pick].clone()
        drop = torch.rand(args.unet_batch, generator=gen) < args.uncond
        caps[drop] = empty
        t = torch.randint(0, 1000, (args.unet_batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        used, inverse = torch.unique(caps, return_inverse=True)
        hidden = text(ids[used]).last_hidden_state[inverse]
        for group in opt.param_groups:
            group["lr"] = args.unet_lr * min(1.0, (step + 1) / 200)
        pred = unet(xt, t, encoder_hidden_states=hidden).sample
        loss = (pred - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0:
            rate = (time.monotonic() - started) / 50
            started = time.monotonic()
            log(f"unet step {step}/{args.unet_steps} loss {running:.4f} ({rate:.2f} s/step)")
        if time.monotonic() - last_save > args.checkpoint_seconds or step == args.unet_steps:
            save_checkpoint(path, {"unet": unet.state_dict(), "text": text.state_dict(), "opt": opt.state_dict(),
                                   "ema": ema, "step": step})
            last_save = time.monotonic()
            if args.export_every:
                export(args)


# ---------------------------------------------------------------- stage 4: export


def export(args, target: Path | None = None) -> Path:
    """Write the EMA weights as a diffusers StableDiffusionPipeline folder (atomically replaced)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    target = Path(target or args.out)
    state = load_checkpoint(WORK / "unet.pt")
    scaling = torch.load(WORK / "latents.pt")["scaling"]
    vae = load_vae()
    vae.register_to_config(scaling_factor=round(scaling, 5))
    unet, text = make_unet(), make_text_encoder()
    unet.load_state_dict(state["unet"])
    text.load_state_dict(state["text"])
    params = list(unet.parameters()) + list(text.parameters())
    with torch.no_grad():
        for p, e in zip(params, state["ema"]):
            p.copy_(e)
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text.eval(),
        tokenizer=make_tokenizer(),
        unet=unet.eval(),
        scheduler=PNDMScheduler.from_config(SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
    pipe.save_pretrained(staging, safe_serialization=True)
    # the classic SD tokenizer layout (vocab.json + merges.txt), smaller than transformers 5's tokenizer.json
    from diffdiff_cli.models.tokenizer import write_clip_tokenizer_files

    for f in (staging / "tokenizer").iterdir():
        f.unlink()
    write_clip_tokenizer_files(staging / "tokenizer")
    (staging / "TRAINING.json").write_text(json.dumps({
        "recipe": "training/train.py (see training/README.md)",
        "seed": args.seed,
        "vae_steps": args.vae_steps,
        "unet_steps": state["step"],
        "dataset_size": args.dataset_size,
        "scaling_factor": round(scaling, 5),
    }, indent=1) + "\n")
    for f in staging.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)
    staging.chmod(0o755)
    old = target.with_name(f".{target.name}-old")
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    if old.exists():
        import shutil

        shutil.rmtree(old)
    log(f"export: wrote {target} (unet step {state['step']})")
    return target


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=5e-4)
    p.add_argument("--vae-kl", type=float, default=1e-6)
    p.add_argument("--dataset-size", type=int, default=32768)
    p.add_argument("--unet-steps", type=int, default=6000)
    p.add_argument("--unet-batch", type=int, default=64)
    p.add_argument("--unet-lr", type=float, default=5e-4)
    p.add_argument("--uncond", type=float, default=0.1, help="share of empty captions (classifier-free guidance)")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--checkpoint-seconds", type=float, default=180)
    p.add_argument("--export-every", action="store_true", help="also export the diffusers folder at each checkpoint")
    p.add_argument("--out", default=str(EXPORT), help="diffusers folder to write")
    p.add_argument("--work", default=str(WORK), help="checkpoint folder")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--export-only", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> None:
    global WORK
    args = parse(argv)
    WORK = Path(args.work)
    torch.set_num_threads(args.threads)
    from diffdiff_cli.models.load import quiet_libraries

    quiet_libraries(offline=True)
    if not args.export_only:
        started = time.monotonic()
        train_vae(args)
        encode_dataset(args)
        train_unet(args)
        log(f"training done in {(time.monotonic() - started) / 60:.1f} min (this session)")
    export(args)


if __name__ == "__main__":
    main()
