"""The two baselines lvae is timed against, written plainly.

- `classic`: the classic PyTorch VAE example (pytorch/examples, vae/main.py): torchvision's FashionMNIST with
  `ToTensor`, a `DataLoader(batch_size=128, shuffle=True)` with the example's settings (no workers on the CPU;
  one worker and pinned memory on CUDA), Adam at 1e-3 and a plain epoch loop that reads the loss every step.
- `memory`: the same loop, but each batch is sliced out of one float tensor that holds the whole split (on the
  device), in a fresh seeded permutation per epoch: what someone who knows the data fits in memory writes by hand.

Both train lvae's own 784-400-20 MLP (`MLPEncoder`/`MLPDecoder`) on lvae's training split with lvae's loss
(Bernoulli NLL from logits summed over pixels, plus KL, averaged over the batch), so only the loop differs.
The memory loop also shuffles exactly as lvae's `InMemoryBatches` does, so it reproduces lvae's weights.

    python bench/classic.py                 # the classic example, 3 epochs
    python bench/classic.py --loop memory   # the hand-written in-memory loop
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import FashionMNIST
from torchvision.transforms import ToTensor

from common import BATCH_SIZE, DATA_DIR, SEED, ensure_data, header, sync, test_images, test_loss, train_indices
from lvae.networks import MLPDecoder, MLPEncoder

LOG_INTERVAL = 10  # the example prints the running loss every 10 batches


def build_model(device: torch.device) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
    """lvae's MLP pair, built in the order `VAE.__init__` builds it, so the same seed gives the same weights."""
    torch.manual_seed(SEED)
    encoder = MLPEncoder(latent_dim=20, image_shape=(1, 28, 28), hidden_dim=400)
    decoder = MLPDecoder(latent_dim=20, image_shape=(1, 28, 28), hidden_dim=400)
    encoder, decoder = encoder.to(device), decoder.to(device)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    return encoder, decoder, optimizer


def loss_function(encoder: nn.Module, decoder: nn.Module, x: Tensor) -> Tensor:
    """Negative ELBO per image in nats, averaged over the batch; the same operations as lvae's training loss."""
    mu, logvar = encoder(x)  # (B, Z) each
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # reparameterised draw, (B, Z)
    recon = F.binary_cross_entropy_with_logits(decoder(z).flatten(1), x.flatten(1), reduction="none").sum(1)  # (B,)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)  # (B,)
    return (recon + kl).mean()


def train_epoch(encoder: nn.Module, decoder: nn.Module, optimizer: torch.optim.Optimizer, batches, n: int,
                epoch: int, device: torch.device, verbose: bool) -> float:
    """One pass of the example's loop over `batches` of (images, labels); returns the mean loss per image."""
    encoder.train(), decoder.train()
    train_loss = 0.0
    for batch_idx, (x, _) in enumerate(batches):
        x = x.to(device)
        optimizer.zero_grad()
        loss = loss_function(encoder, decoder, x)
        loss.backward()
        train_loss += loss.item() * len(x)  # the example's per-step read-back (a device sync on CUDA)
        optimizer.step()
        if verbose and batch_idx % LOG_INTERVAL == 0:
            print(f"Train Epoch: {epoch} [{batch_idx * BATCH_SIZE}/{n}]\tLoss: {loss.item():.6f}")
    if verbose:
        print(f"====> Epoch: {epoch} Average loss: {train_loss / n:.4f}")
    return train_loss / n


def in_memory_batches(images: Tensor, labels: Tensor, epoch: int):
    """Whole batches sliced from in-memory tensors, in lvae's order for this epoch (seed + epoch)."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SEED + epoch)).to(images.device)
    for start in range(0, len(images), BATCH_SIZE):
        index = order[start:start + BATCH_SIZE]  # (B,)
        yield images[index], labels[index]


def run(loop: str, data_dir: str, epochs: int, device: str, limit: int | None = None,
        verbose: bool = True) -> dict:
    """Train one baseline for `epochs`; per-epoch seconds (training only), samples/s and the test loss."""
    dev = torch.device(device)
    index = train_indices(data_dir, limit)
    if loop == "classic":
        # The example's DataLoader settings: on CUDA one worker and pinned memory, on the CPU neither.
        kwargs = {"num_workers": 1, "pin_memory": True} if dev.type == "cuda" else {}
        train_set = Subset(FashionMNIST(data_dir, train=True, transform=ToTensor()), index.tolist())
        loader = DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True, **kwargs)
        epoch_batches = lambda epoch: loader  # noqa: E731
    elif loop == "memory":
        full = FashionMNIST(data_dir, train=True)
        images = full.data[index].to(dev).unsqueeze(1).float().div_(255)  # (N, 1, 28, 28) in [0, 1], once
        labels = full.targets[index].to(dev)
        epoch_batches = lambda epoch: in_memory_batches(images, labels, epoch)  # noqa: E731
    else:
        raise ValueError(f"loop={loop!r} is not 'classic' or 'memory'")
    encoder, decoder, optimizer = build_model(dev)
    n = len(index)
    seconds, cpu_seconds, losses = [], [], []
    for epoch in range(epochs):
        sync(dev)
        start, cpu_start = time.perf_counter(), time.process_time()
        losses.append(train_epoch(encoder, decoder, optimizer, epoch_batches(epoch), n, epoch + 1, dev, verbose))
        sync(dev)
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    return {"n_train": n, "epochs": epochs, "epoch_seconds": seconds, "train_seconds": sum(seconds),
            "epoch_cpu_seconds": cpu_seconds,
            "samples_per_s": n * epochs / sum(seconds), "train_loss": losses[-1],
            "test_loss": test_loss(encoder, decoder, test_images(data_dir).to(dev)),
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loop", choices=("classic", "memory"), default="classic")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--data_dir", default=str(DATA_DIR), help="holds FashionMNIST/raw/ (default bench/data)")
    parser.add_argument("--limit", type=int, default=None, help="train on the first LIMIT inputs of the split")
    args = parser.parse_args()
    ensure_data(args.data_dir)
    print(header(args.device))
    result = run(args.loop, args.data_dir, args.epochs, args.device, args.limit)
    print(f"{args.loop}: {result['n_train']} inputs x {args.epochs} epochs, "
          f"{', '.join(f'{s:.2f}' for s in result['epoch_seconds'])} s per epoch, "
          f"{result['samples_per_s']:.0f} samples/s, test loss {result['test_loss']:.3f} nats per image")


if __name__ == "__main__":
    main()
