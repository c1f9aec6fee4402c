"""The VAE: its encoder and decoder (lvae's or your own), the per-image loss in nats, and the importance-weighted
test bound."""

import functools
import math
from typing import Any, Literal, Optional

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor, nn
from torch.distributions import Normal
from torchmetrics import MaxMetric, MeanMetric
from typing_extensions import override

from lvae.checkpoints import adopt_legacy_states, check_weight_shapes, load_checkpoint
from lvae.divergence import DivergenceGuard, vitals
from lvae.elbo import add_neg_elbo
from lvae.errors import ConfigError
from lvae.eval_noise import EvalNoise
from lvae.images import to_uint8
from lvae.latent_maths import kl_to_prior, reparameterise
from lvae.latents import LatentCollection, Latents
from lvae.networks import ARCHITECTURES, ImageShape, NetworkFactory, describe_network, network_factory
from lvae.resume import apply_new_lr
from lvae.trust import trusted_load_kwargs

STAGES = ("train", "val", "test")
PARTS = ("loss", "recon", "kl")
LIKELIHOODS = ("bernoulli", "gaussian")


def _name(factory: NetworkFactory) -> str:
    return describe_network(factory)["class_path"]


class VAE(L.LightningModule):
    """A variational autoencoder with a N(0, I) prior, on images of any shape (C, H, W) in [0, 1].

    The encoder and decoder are lvae's MLP or conv pair (`architecture`, `hidden_dim`) or networks of your own
    (`encoder`, `decoder`: built as ``encoder(latent_dim, image_shape, **init_args)``, see `lvae.networks`); one dry
    forward pass at construction refuses networks whose outputs have the wrong shape, naming the shapes.

    Losses are per image, in nats: the negative log-likelihood of the pixels (summed over pixels and channels)
    plus ``beta`` times the analytic KL of q(z|x) to N(0, I). The likelihood is Bernoulli (grey pixels as
    Bernoulli targets, the classic example's convention) or Gaussian with a learned scale per channel, for natural
    images; its loss can be negative. Either way `decode` returns the mean image in [0, 1].

    Fit stops with a `DivergenceError` when the run has diverged (`lvae.divergence`): a loss that is NaN,
    infinite or above 100 times what an untrained model scores (D ln 2 nats for D pixel values: 54,343 on MNIST),
    means with |mu| above 1e4 or log-variances above 20, whichever comes first. Each training step is judged one
    step late, so the check never waits for the device; each validation epoch on the whole validation set; and
    every checkpoint, before it is written, on the weights it holds (scored on the last training batch), so none
    holds diverged weights. A resume with another ``lr`` trains with that ``lr``, not the one in the checkpoint's
    optimiser.

    Args:
        latent_dim: Z, the size of the latent code.
        architecture: ``"mlp"`` (pixels-hidden-Z, the classic example) or ``"conv"`` (a small convolutional pair,
            for images whose height and width are divisible by 4); used when `encoder`/`decoder` are not given.
        hidden_dim: width of the built-in networks' hidden layer.
        encoder: your own encoder, ``class_path`` + ``init_args`` in a config (overrides `architecture`).
        decoder: your own decoder, the same way.
        image_shape: (C, H, W) of the images; the CLI takes it from the data module.
        likelihood: ``"bernoulli"`` or ``"gaussian"`` (a learned scale per channel).
        beta: weight of the KL term (1 is the ELBO).
        lr: Adam learning rate.
        iwae_samples: k, the importance samples per image for ``test/nll`` (the IWAE bound).
        elbo_samples: z draws per input for the per-input negative ELBO that the uncertainty pictures use.
        latent_points: how many validation inputs the latent pictures follow (a fixed subset chosen once per
            run); 0 switches the collection off.
        compile: run the loss computation through ``torch.compile`` (no gain on small CPUs; try it on GPUs).
    """

    def __init__(
        self,
        latent_dim: PositiveInt = 20,
        architecture: Literal["mlp", "conv"] = "mlp",
        hidden_dim: PositiveInt = 400,
        encoder: Optional[NetworkFactory] = None,
        decoder: Optional[NetworkFactory] = None,
        image_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (1, 28, 28),
        likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
        beta: NonNegativeFloat = 1.0,
        lr: PositiveFloat = 1e-3,
        iwae_samples: PositiveInt = 100,
        elbo_samples: PositiveInt = 4,
        latent_points: NonNegativeInt = 2000,
        compile: bool = False,
    ):
        super().__init__()
        # Plain types: values parsed from YAML arrive as jsonargparse's PositiveInt & co, which would make every
        # checkpoint unloadable with torch.load(weights_only=True), as Lightning resumes.
        latent_dim, hidden_dim, iwae_samples, elbo_samples, latent_points = (
            int(latent_dim), int(hidden_dim), int(iwae_samples), int(elbo_samples), int(latent_points))
        beta, lr, architecture, compile = float(beta), float(lr), str(architecture), bool(compile)
        likelihood, image_shape = str(likelihood), tuple(int(v) for v in image_shape)
        # The parser checks these for CLI users; Python users get the same refusal here.
        for key, value in (("latent_dim", latent_dim), ("hidden_dim", hidden_dim), ("iwae_samples", iwae_samples),
                           ("elbo_samples", elbo_samples)):
            if int(value) < 1:
                raise ConfigError(f"model.{key}={value} must be a positive integer")
        if architecture not in ARCHITECTURES:
            raise ConfigError(f"model.architecture={architecture!r} is not one of {sorted(ARCHITECTURES)}")
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ConfigError(f"model.image_shape={list(image_shape)} must be [channels, height, width], e.g. "
                              "[1, 28, 28]")
        if likelihood not in LIKELIHOODS:
            raise ConfigError(f"model.likelihood={likelihood!r} is not one of {list(LIKELIHOODS)}")
        if beta < 0:
            raise ConfigError(f"model.beta={beta} must be >= 0 (1 is the ELBO)")
        if lr <= 0:
            raise ConfigError(f"model.lr={lr} must be > 0")
        if latent_points < 0:
            raise ConfigError(f"model.latent_points={latent_points} must be >= 0 (0 switches collection off)")
        self.save_hyperparameters()
        for key in ("encoder", "decoder"):  # a class or a bound one becomes its class_path and init_args
            self.hparams[key] = describe_network(self.hparams.get(key))
        self.hparams["image_shape"] = list(image_shape)
        built_in = functools.partial(ARCHITECTURES[architecture][0], hidden_dim=hidden_dim), \
            functools.partial(ARCHITECTURES[architecture][1], hidden_dim=hidden_dim)
        encoder = built_in[0] if encoder is None else network_factory(encoder)
        decoder = built_in[1] if decoder is None else network_factory(decoder)
        self.encoder = encoder(latent_dim, image_shape)
        self.decoder = decoder(latent_dim, image_shape)
        self._check_networks(encoder, decoder)
        # The Gaussian's scale per channel, learned: softplus(raw_scale + ln(e - 1)), positive and 1 at the start.
        self.raw_scale = nn.Parameter(torch.zeros(image_shape[0])) if likelihood == "gaussian" else None
        # Per-image means accumulated on the device and synced across ranks once per epoch by torchmetrics.
        # nan_strategy="disable": torchmetrics would otherwise drop NaN values and report a finite mean.
        self.metrics = nn.ModuleDict({f"{s}_{p}": MeanMetric(nan_strategy="disable") for s in STAGES for p in PARTS})
        self.test_nll = MeanMetric(nan_strategy="disable")
        # The largest |mu| and logvar of a validation epoch, for the divergence rule.
        self.val_extremes = nn.ModuleDict({k: MaxMetric(nan_strategy="disable") for k in ("mu", "logvar")})
        self.latents = LatentCollection(latent_points)
        self._loss_parts = torch.compile(self._loss_parts_eager) if compile else self._loss_parts_eager
        self.divergence = DivergenceGuard(self._pixels)
        self._saved_lr: Optional[float] = None  # the lr the loaded checkpoint trained with
        self._eval_noise = EvalNoise(latent_dim, 1 + elbo_samples)

    @property
    def image_shape(self) -> ImageShape:
        return tuple(self.hparams.image_shape)

    @property
    def _pixels(self) -> int:
        return math.prod(self.image_shape)  # D, the pixel values a likelihood scores

    def _check_networks(self, encoder: NetworkFactory, decoder: NetworkFactory) -> None:
        """One dry forward pass of two blank images: a network with the wrong output shape is refused here, with
        the shapes named, not in the middle of an epoch."""
        z, shape = self.hparams.latent_dim, (2, *self.image_shape)
        with torch.no_grad():
            try:
                out = self.encoder(torch.zeros(shape))
            except Exception as err:
                raise ConfigError(f"model.encoder ({_name(encoder)}) fails on images of shape {shape}: "
                                  f"{type(err).__name__}: {err}") from None
            if not (isinstance(out, (tuple, list)) and len(out) == 2 and
                    all(isinstance(t, Tensor) and tuple(t.shape) == (2, z) for t in out)):
                got = ", ".join(str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__
                                for t in (out if isinstance(out, (tuple, list)) else [out]))
                raise ConfigError(f"model.encoder ({_name(encoder)}) maps images {shape} to {got}; lvae needs "
                                  f"(mu, logvar), each (2, {z}) = (batch, model.latent_dim)")
            try:
                logits = self.decoder(out[0])
            except Exception as err:
                raise ConfigError(f"model.decoder ({_name(decoder)}) fails on z of shape (2, {z}): "
                                  f"{type(err).__name__}: {err}") from None
            if not isinstance(logits, Tensor) or tuple(logits.shape) not in (shape, (2, math.prod(shape[1:]))):
                got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise ConfigError(f"model.decoder ({_name(decoder)}) maps z (2, {z}) to {got}; lvae needs logits of "
                                  f"the images' shape {shape} (or flattened, (2, {math.prod(shape[1:])}))")

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: Optional[bool] = None, **kwargs: Any) -> "VAE":
        """Lightning's `load_from_checkpoint`, for untrusted files: the checkpoint is read as tensors and plain
        values only, and its hyperparameters may name only Lightning's own instantiator and classes defined in lvae
        (`lvae.trust.check_class_paths`). Any other class (a network of your own) is passed in by keyword, e.g.
        ``encoder=MyEncoder``, and is then built with the checkpoint's init_args."""
        hparams = load_checkpoint(checkpoint_path).get("hyper_parameters", {})
        kwargs = trusted_load_kwargs(hparams, kwargs, str(checkpoint_path), owner=cls)
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                                            strict=strict, weights_only=True, **kwargs)

    # ----- what a user reaches for -----
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z|x), each (B, Z), for images (B, C, H, W) in [0, 1]."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """The mean image (B, C, H, W) in [0, 1] for latent codes (B, Z)."""
        return torch.sigmoid(self._logits(z))

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """Decode n draws z ~ N(0, I) from the prior: (n, C, H, W)."""
        z = torch.randn(n, self.hparams.latent_dim, generator=generator, device="cpu").to(self.device)
        return self.decode(z)

    @override
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The mean reconstruction (B, C, H, W) from one posterior draw, with mu and logvar."""
        mu, logvar = self.encoder(x)
        z = reparameterise(mu, logvar, torch.randn_like(mu))
        return self.decode(z), mu, logvar

    # ----- the loss -----
    def _logits(self, z: Tensor) -> Tensor:
        """The decoder's output for z (..., Z), shaped as images (..., C, H, W) (a decoder may flatten them)."""
        return self.decoder(z.flatten(0, -2)).reshape(*z.shape[:-1], *self.image_shape)

    def _nll(self, logits: Tensor, x: Tensor) -> Tensor:
        """-log p(x | z) per image, in nats: logits (..., C, H, W) of the decoder, images x broadcast to them."""
        x = x.expand_as(logits)
        if self.raw_scale is None:
            # From logits: log(sigmoid) would lose precision where the decoder is confident.
            nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        else:  # a Gaussian around the mean image, with one learned scale per channel
            scale = F.softplus(self.raw_scale + math.log(math.e - 1)).view(-1, 1, 1)  # (C, 1, 1)
            nll = F.gaussian_nll_loss(torch.sigmoid(logits), x, scale.pow(2).expand_as(logits), full=True,
                                      reduction="none")
        return nll.flatten(-3).sum(-1)

    def _loss_parts_eager(self, x: Tensor, eps: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """mu, logvar (B, Z) and the per-image reconstruction NLL and KL (B,), in nats.

        `eps` (B, Z) fixes the standard-normal draw; by default a fresh one is drawn."""
        mu, logvar = self.encoder(x)
        eps = torch.randn_like(mu) if eps is None else eps
        z = reparameterise(mu, logvar, eps)  # (B, Z)
        return mu, logvar, self._nll(self._logits(z), x), kl_to_prior(mu, logvar)

    def _objective(self, recon: Tensor, kl: Tensor) -> Tensor:
        return recon + self.hparams.beta * kl  # (B,)

    def _update_metrics(self, stage: str, recon: Tensor, kl: Tensor) -> Tensor:
        loss = self._objective(recon, kl)
        for part, value in (("loss", loss), ("recon", recon), ("kl", kl)):
            self.metrics[f"{stage}_{part}"].update(value.detach())  # on the device, no sync
        if stage != "train":
            self._log_means(stage)
        return loss.mean()

    def _log_means(self, stage: str) -> None:
        for part in PARTS:
            self.log(f"{stage}/{part}", self.metrics[f"{stage}_{part}"], on_step=False, on_epoch=True,
                     prog_bar=part == "loss" and stage != "train")

    @override
    def on_train_epoch_end(self) -> None:
        # Once per epoch rather than per step: each self.log call moves the metric's state, a cost per step.
        self._log_means("train")

    @override
    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _, _ = batch
        self.divergence.check_step(self.hparams.lr)
        mu, logvar, recon, kl = self._loss_parts(x)
        loss = self._update_metrics("train", recon, kl)
        # Read back one step later, so the check never waits for the device (no sync in the hot path).
        self.divergence.record(vitals(loss, recon, kl, mu, logvar), self.current_epoch, self.global_step, x)
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0:  # only the steps Lightning hands to the loggers
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _vitals_at_means(self, x: Tensor) -> Tensor:
        """What the divergence rule reads of images x, scored at the means: no noise is drawn, so the random
        stream stays as it was."""
        mu, logvar, recon, kl = self._loss_parts_eager(x, torch.zeros(len(x), self.hparams.latent_dim,
                                                                      device=x.device))
        return vitals(self._objective(recon, kl).mean(), recon, kl, mu, logvar)

    @override
    def on_validation_start(self) -> None:
        self.divergence.check_step(self.hparams.lr)

    @override
    def on_train_end(self) -> None:
        self.divergence.check_step(self.hparams.lr)

    @override
    def on_validation_epoch_end(self) -> None:
        # The whole validation set judges the weights that the checkpoints saved right after this hook hold.
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        # Synced across ranks, so every rank decides alike; the means are cached for the log call.
        values = [self.metrics[f"val_{part}"].compute().item() for part in PARTS]
        values += [self.val_extremes[k].compute().item() for k in ("mu", "logvar")]
        self.divergence.check_validation(values, self.current_epoch, self.global_step, self.hparams.lr)

    @override
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Every checkpoint passes through here: never write one after a diverged step, nor diverged weights.
        self.divergence.check_step(self.hparams.lr)
        self.divergence.check_weights(self._vitals_at_means, self.current_epoch, self.global_step, self.hparams.lr)
        checkpoint["latent_subset"] = self.latents.state_dict()

    @override
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_weight_shapes(checkpoint, self.state_dict())  # before Lightning loads the weights
        if self._trainer is not None:  # before Lightning reads the callbacks' states
            adopt_legacy_states(checkpoint, self.trainer.callbacks)
        if "latent_subset" in checkpoint:
            self.latents.load_state_dict(checkpoint["latent_subset"])
        self._saved_lr = checkpoint.get("hyper_parameters", {}).get("lr")

    @override
    def on_train_start(self) -> None:
        # Lightning restores the optimiser with the checkpoint's lr; a new --model.lr on resume must win.
        trained, self._saved_lr = self._saved_lr, None
        apply_new_lr(self.trainer, trained, self.hparams.lr)

    @override
    def on_validation_epoch_start(self) -> None:
        self.latents.reset(self.current_epoch)
        for extreme in self.val_extremes.values():
            extreme.reset()

    def eval_noise(self, index: Tensor, stage: str, draws: int = 1) -> Tensor:
        """Standard-normal draws (draws, B, Z) that depend only on each input's dataset index and the stage.

        Evaluation uses these common random numbers instead of fresh noise, so `val/loss` moves only when the
        model does, and N processes, whatever batches they form, compute exactly what one process computes
        (`lvae.eval_noise`)."""
        return self._eval_noise(index, stage, draws)

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        x, y, index = batch
        eps = self.eval_noise(index, "val")  # (1, B, Z): draw 0 gives val/loss, draws 1..S the negative ELBO
        mu, logvar, recon, kl = self._loss_parts(x, eps[0])
        self._update_metrics("val", recon, kl)
        self.val_extremes["mu"].update(mu.detach().abs().amax())
        self.val_extremes["logvar"].update(logvar.detach().amax())
        if self.latents.enabled:
            # The negative ELBO is left for `validation_latents`: only the followed subset needs it.
            self.latents.add(index=index, label=y, mu=mu, logvar=logvar, recon=recon, kl=kl,
                             image=to_uint8(x))  # (B, C, H, W)

    def neg_elbo(self, x: Tensor, mu: Tensor, logvar: Tensor, eps: Optional[Tensor] = None) -> Tensor:
        """Per-input negative ELBO (B,) in nats, the reconstruction term averaged over `elbo_samples` draws
        (or over the given standard-normal draws `eps`, (S, B, Z))."""
        if eps is None:
            eps = torch.randn(self.hparams.elbo_samples, *mu.shape, device=mu.device)
        z = reparameterise(mu, logvar, eps)  # (S, B, Z)
        return self._nll(self._logits(z), x).mean(0) + kl_to_prior(mu, logvar)

    def validation_latents(self, neg_elbo: bool = True) -> Optional[Latents]:
        """This epoch's collected latents, gathered across ranks once. Every rank must call it (a collective).

        With `neg_elbo` (the default) they hold each input's negative ELBO, computed on the calling rank, once per
        epoch (`with_neg_elbo`). The pictures ask without it and add it on rank zero for the epochs they draw."""
        # The negative ELBO is added for the followed inputs only, not in every validation step (lvae.elbo).
        return self.latents.result(self.trainer.strategy, finish=self.with_neg_elbo if neg_elbo else None)

    def with_neg_elbo(self, latents: Latents) -> Latents:
        """`latents` (of `validation_latents(neg_elbo=False)`) with each input's negative ELBO by the weights now:
        `elbo_samples` decodes per input, local work on the calling rank (no collective)."""
        return add_neg_elbo(self, latents)

    @override
    def test_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        x, _, index = batch
        _, _, recon, kl = self._loss_parts(x, self.eval_noise(index, "test")[0])
        self._update_metrics("test", recon, kl)
        self.test_nll.update(self.iwae_nll(x))
        self.log("test/nll", self.test_nll, on_step=False, on_epoch=True)

    def iwae_nll(self, x: Tensor, k: Optional[int] = None, chunk: int = 50) -> Tensor:
        """Importance-weighted estimate of -log p(x) per image (B,), in nats, with k samples (Burda et al.)."""
        k = k or self.hparams.iwae_samples
        mu, logvar = self.encoder(x)
        q = Normal(mu, torch.exp(0.5 * logvar))
        prior = Normal(torch.zeros_like(mu), torch.ones_like(mu))
        log_w = []
        for start in range(0, k, chunk):  # chunks bound the (k, B, C, H, W) logits in memory
            z = reparameterise(mu, logvar, torch.randn(min(chunk, k - start), *mu.shape, device=mu.device,
                                                       dtype=mu.dtype))  # (k', B, Z)
            log_px = -self._nll(self._logits(z), x)  # (k', B)
            log_w.append(log_px + prior.log_prob(z).sum(-1) - q.log_prob(z).sum(-1))  # (k', B)
        return -(torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k))

    @override
    def predict_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y, index = batch
        mu, logvar = self.encoder(x)
        return {"mu": mu, "logvar": logvar, "label": y, "index": index}

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        # The fused kernel is the same Adam in one kernel per parameter, a faster step; older torch lacks it.
        try:
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, fused=True)
        except RuntimeError:
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
