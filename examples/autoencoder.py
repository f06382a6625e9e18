"""Train a small convolutional autoencoder on Fashion-MNIST with fastconv's own autograd
(fastconv.nn, fastconv.optim; no PyTorch) and draw test images beside their reconstructions.

    python examples/autoencoder.py --epochs 2
    python examples/autoencoder.py --epochs 1 --limit 2000 --out quick.png

The encoder's two stride-2 convolutions take a 1x28x28 image to 16x14x14 and 32x7x7; the
decoder's two stride-2 transposed convolutions (nn.ConvTranspose2d) take it back to 16x14x14
and 1x28x28, the last through a sigmoid, so the output is a picture in [0, 1] like the input
(the pixels scaled to [0, 1], not normalised). Each convolution runs fused with its activation.
The loss is the mean squared error to the input, minimised with Adam.

It first prints the untrained net's test loss as epoch 0, then for each epoch its time, the
mean training loss and the test loss, and at the end writes a PNG of 8 test images (top row)
and their reconstructions (bottom row).
"""

import time

from matplotlib.figure import Figure
from training_options import training_options

import fastconv
from fastconv import data, nn, optim
from fastconv.nn import functional as F


def arguments():
    parser = training_options(__doc__)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the net trains (default: %(default)s)")
    parser.add_argument("--out", default="autoencoder.png", metavar="PATH",
                        help="the PNG of test images and their reconstructions (default: "
                             "%(default)s)")
    return parser


class Autoencoder(nn.Module):
    """1x28x28 -> 16x14x14 -> 32x7x7 (the code) -> 16x14x14 -> 1x28x28 in [0, 1]."""

    def __init__(self):
        self.encoder = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        # output_padding=1: a stride-2 transposed convolution of 7 gives 13 or 14; take 14
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 3, stride=2, padding=1, output_padding=1), nn.Sigmoid())

    def forward(self, x):
        return self.decoder(self.encoder(x))


def load(args):
    """Train and test batches of the images as float32 (N, 1, 28, 28) in [0, 1]."""
    part = slice(args.limit)
    train_x, train_y = data.load_fashion_mnist("train", root=args.data)
    test_x, test_y = data.load_fashion_mnist("test", root=args.data)
    train = data.Batches(train_x[part], train_y[part], args.batch_size, seed=args.seed,
                         normalize=False, pad_to=None)
    test = data.Batches(test_x[part], test_y[part], 1000, shuffle=False, normalize=False,
                        pad_to=None)
    return train, test


def train_epoch(net, optimizer, batches, device):
    """One pass over ``batches`` with Adam steps; returns the mean loss of the images seen."""
    total, count = 0.0, 0
    for x, _ in batches:
        x = fastconv.tensor(x, device=device)
        loss = F.mse_loss(net(x), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(x)
        count += len(x)
    return total / count


def evaluate(net, batches, device):
    """The mean loss over ``batches``, without a graph."""
    total = 0.0
    with fastconv.no_grad():
        for x, _ in batches:
            x = fastconv.tensor(x, device=device)
            total += F.mse_loss(net(x), x).item() * len(x)
    return total / len(batches.images)


def draw(net, images, device, path):
    """Write ``images`` (top row) over their reconstructions (bottom row) to the PNG ``path``."""
    with fastconv.no_grad():
        rows = images, net(fastconv.tensor(images, device=device)).numpy()
    # a Figure outside pyplot: savefig draws it with Agg, no display or global state needed
    figure = Figure(figsize=(len(images), 2.2))
    for row, axes_row in zip(rows, figure.subplots(2, len(images), squeeze=False),
                             strict=True):
        for image, axes in zip(row, axes_row, strict=True):
            axes.imshow(image[0], cmap="gray", vmin=0, vmax=1)
            axes.set_axis_off()
    figure.suptitle("test images (top) and their reconstructions (bottom)")
    figure.savefig(path, format="png", dpi=100)


def main():
    args = arguments().parse_args()
    train, test = load(args)
    fastconv.manual_seed(args.seed)
    net = Autoencoder().to(args.device)
    optimizer = optim.Adam(net.parameters(), lr=args.lr)
    print(f"autoencoder: {len(train.images)} training images, {len(test.images)} test images, "
          f"batch {args.batch_size}, on {args.device}")
    print(f"epoch 0: untrained, test loss {evaluate(net, test, args.device):.4f}", flush=True)
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        loss = train_epoch(net, optimizer, train, args.device)
        seconds = time.perf_counter() - start
        print(f"epoch {epoch}: {seconds:.1f} s, train loss {loss:.4f}, "
              f"test loss {evaluate(net, test, args.device):.4f}", flush=True)
    first, _ = next(iter(test))  # the test set in order: its first images
    draw(net, first[:8], args.device, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
